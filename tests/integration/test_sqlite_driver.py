"""The one-hop SQLite driver (adapters/storage/sqlite_driver.py): what SQLAlchemy reads from a cursor still
comes through (rows, rowcount, lastrowid, executemany, errors), in one call on aiosqlite's thread, and
commit or rollback with no transaction open make no call."""

from __future__ import annotations

from pathlib import Path

import aiosqlite.core
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from agentloop.adapters.storage import create_engine
from agentloop.adapters.storage.sqlite_driver import DRIVER


async def test_statements_round_trip_in_one_hop_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    assert engine.dialect.driver == DRIVER and engine.dialect.name == "sqlite"
    hops = 0
    original = aiosqlite.core.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: object, *args: object, **kwargs: object) -> object:
        nonlocal hops
        hops += 1
        return await original(self, fn, *args, **kwargs)

    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
            monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
            inserted = await connection.execute(text("INSERT INTO t (name) VALUES ('a')"))
            assert inserted.lastrowid == 1 and hops == 1
            many = await connection.execute(
                text("INSERT INTO t (name) VALUES (:n)"), [{"n": "b"}, {"n": "c"}]
            )
            assert many.rowcount == 2
            changed = await connection.execute(text("UPDATE t SET name = name || '!' WHERE id > 1"))
            assert changed.rowcount == 2
            rows = (await connection.execute(text("SELECT id, name FROM t ORDER BY id"))).all()
            assert [tuple(r) for r in rows] == [(1, "a"), (2, "b!"), (3, "c!")]
            assert rows[0]._fields == ("id", "name")
            assert hops == 4
        assert hops == 5  # the commit; the pool's rollback after it has nothing to undo: no call
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 3
        assert hops == 6  # a read-only connection ends without a call either
        async with engine.connect() as connection:
            await connection.execute(text("DELETE FROM t"))
        async with engine.connect() as connection:  # not committed: rolled back
            assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 3
            with pytest.raises(IntegrityError):
                await connection.execute(text("INSERT INTO t (name) VALUES ('a')"))
            await connection.rollback()
            with pytest.raises(OperationalError):
                await connection.execute(text("SELECT nope FROM t"))
    finally:
        await engine.dispose()

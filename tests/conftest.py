"""Shared fixtures. Each group sits in its own labelled section."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from agentloop.adapters.storage import SqlStore, create_engine, create_sessionmaker, upgrade

# ----------------------------------------------------------------------------------------------------------
# storage fixtures: a fresh, migrated database per test, SQLite (a file in tmp_path) and PostgreSQL
# (a throwaway database on 127.0.0.1:5432). `sql_store` runs a test once against each.
# ----------------------------------------------------------------------------------------------------------

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}


def database_unavailable(reason: str) -> NoReturn:
    """Skip locally; in CI a missing database is a failure, never a silent skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(**PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        database_unavailable(f"PostgreSQL on 127.0.0.1:5432 unreachable: {exc!r}")


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards; yields its SQLAlchemy async URL."""
    name = f"agentloop_test_{secrets.token_hex(8)}"
    admin = await _pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await _pg_admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in a nested directory that does not exist yet (create_engine/upgrade make it)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'agentloop.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[str]:
    """An empty database (not migrated) of each kind."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def sql_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the migrated database."""
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sql_store(sql_engine: AsyncEngine) -> SqlStore:
    return SqlStore(create_sessionmaker(sql_engine))


# ----------------------------------------------------------------------------------------------------------
# CI: a skipped test is a failure when CI=true, so a missing service or tool cannot pass silently.
# ----------------------------------------------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"

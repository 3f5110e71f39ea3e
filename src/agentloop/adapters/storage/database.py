"""Engine setup, health check and Alembic migrations for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from agentloop.adapters.storage import sqlite_driver, sqlite_writer
from agentloop.errors import StorageError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_POOL_SIZE = 5


def create_engine(url: str) -> AsyncEngine:
    """An async engine; for SQLite, WAL mode, enforced foreign keys and a busy timeout on every connection."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return create_async_engine(sa_url, pool_pre_ping=True)
    _ensure_sqlite_dir(sa_url)
    if sa_url.get_driver_name() == "aiosqlite":
        # The same driver, one thread hop per statement instead of four (sqlite_driver.py).
        sa_url = sa_url.set(drivername=f"sqlite+{sqlite_driver.DRIVER}")
    # Five connections and no overflow: SQLite has one writer at a time and this runs on few cores, while
    # an overflow connection is a new connection and thread (aiosqlite) opened for one session and closed
    # after it, which under load is most of the work. Callers beyond five wait for a free one.
    pooled = bool(sa_url.database) and sa_url.database != ":memory:" and "memory" not in sa_url.query.values()
    options: dict[str, Any] = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": 0} if pooled else {}
    engine = create_async_engine(sa_url, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    if pooled:
        # Hot-path writes (a turn's messages and events) in one thread hop per transaction (sqlite_writer.py).
        sqlite_writer.attach(engine, sa_url, _sqlite_pragmas)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no lazy reloads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Run a trivial query; StorageError if the database cannot be reached."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"database unreachable: {type(exc).__name__}") from exc


def upgrade(url: str) -> None:
    """Apply the packaged Alembic migrations up to head. Idempotent.

    From async code prefer `await asyncio.to_thread(upgrade, url)`: called on a running event loop it
    still works, but blocks that loop while it runs.
    """
    config = alembic_config(url)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _run_upgrade(config)
        return
    # env.py drives its own event loop, which cannot start inside a running one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_run_upgrade, config).result()


def alembic_config(url: str) -> Config:
    """Alembic config for the migrations inside the installed package; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # set_main_option goes through ConfigParser interpolation: a URL-encoded password holds '%'.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _run_upgrade(config: Config) -> None:
    try:
        command.upgrade(config, "head")
    except (SQLAlchemyError, OSError, CommandError) as exc:
        raise StorageError(f"database migration failed: {exc}") from exc


def _ensure_sqlite_dir(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers proceed while one writer commits; it is stored in the file, set once per connect.
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: still never corrupt, and a crash of
        # the process loses nothing; only an OS crash or power cut may drop the last commits. Commits (each
        # turn's messages and events) get several times faster (bench/results/events.json).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()

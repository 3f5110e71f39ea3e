"""SQLite writes of the hot path in one thread hop per transaction.

Every statement through the async driver is a round trip between the event loop and the connection's thread
(sqlite_driver.py makes it one per statement instead of four). An agent turn's write is five such round trips
(lock the conversation, read its last seq, insert messages, insert events, commit), a lone event two; on a
2-core machine those hops, not SQLite, were most of the cost (bench/results/events.json). The writer runs
the whole transaction, SQLAlchemy's own sync execution included, on one thread of its own with a plain
`sqlite3` connection to the same file: one hop per transaction, whatever it holds.

SQLite has one writer at a time anyway, and group commit (group_commit.py) already makes these writes one
transaction after another, so one thread and one connection lose nothing. The connection gets the same
pragmas as the async ones (WAL, synchronous=NORMAL, foreign keys, busy timeout), and other writers (the
async connections' own writes) wait for its lock as they wait for each other's.

`create_engine` attaches a writer to each engine of a SQLite file (not an in-memory database, which another
connection would not see); disposing the engine disposes its writer's connection.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
SyncWrite = Callable[[Connection, Sequence[T]], None]

_WRITERS: weakref.WeakKeyDictionary[Engine, SqliteWriter] = weakref.WeakKeyDictionary()


class SqliteWriter:
    """One connection on one thread; `transaction(write, items)` runs `write` in a transaction there."""

    def __init__(self, url: URL, on_connect: Callable[[Any, Any], None]) -> None:
        # Plain pysqlite on our own thread. check_same_thread is off only so that dispose() may close the
        # idle connection from the event loop's thread: every statement runs on the writer's thread.
        self._engine = create_sync_engine(
            url.set(drivername="sqlite+pysqlite"),
            pool_size=1,
            max_overflow=0,
            connect_args={"check_same_thread": False},
        )
        event.listen(self._engine, "connect", on_connect)
        self._start()

    def _start(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentloop-sqlite-writer")

    def _after_fork_in_child(self) -> None:
        """A forked child inherits the executor but not its thread (work would wait forever), and must not
        use the parent's connection: a thread and a connection of its own."""
        self._engine.dispose(close=False)
        self._start()

    async def transaction(self, write: SyncWrite[T], items: Sequence[T]) -> None:
        """Run `write(connection, items)` in one transaction on the writer's thread: committed when it
        returns, rolled back if it raises (the error is re-raised here)."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._run, write, items)

    def _run(self, write: SyncWrite[T], items: Sequence[T]) -> None:
        with self._engine.begin() as connection:
            write(connection, items)

    def dispose(self) -> None:
        """Close the idle connection (a new one opens on the next write)."""
        self._engine.dispose()


def attach(engine: AsyncEngine, url: URL, on_connect: Callable[[Any, Any], None]) -> SqliteWriter:
    """Give `engine` (a SQLite file's) a writer; it is disposed with the engine."""
    writer = SqliteWriter(url, on_connect)
    _WRITERS[engine.sync_engine] = writer
    event.listen(engine.sync_engine, "engine_disposed", lambda _engine: writer.dispose())
    return writer


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS.values()):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def writer_of(engine: AsyncEngine) -> SqliteWriter | None:
    """The writer attached to `engine`, if any (engines of PostgreSQL or an in-memory SQLite have none)."""
    return _WRITERS.get(engine.sync_engine)

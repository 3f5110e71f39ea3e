"""SQLAlchemy's aiosqlite dialect with one thread hop per statement instead of four.

aiosqlite runs every call on the connection's own thread; SQLAlchemy's adapter makes four such calls per
statement (open a cursor, execute, fetch the rows, close the cursor), each a round trip between the event
loop and that thread: two thread wake-ups and a GIL hand-over. On a busy 2-core machine those hops, not
SQLite, were most of the cost of a cheap read or a one-event write (bench/results/endpoints.json,
events.json; ADR-0009). This cursor does all four in one call on the connection's thread and hands the
event loop the rows, the description, rowcount and lastrowid; and commit or rollback outside a transaction,
which sqlite3 would ignore anyway, makes no call at all.

Registered as the `sqlite+agentloop` driver; `database.create_engine` uses it for `sqlite+aiosqlite` URLs.
Server-side (streaming) cursors keep SQLAlchemy's own implementation.
"""

from __future__ import annotations

import collections
import sqlite3
from functools import partial
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

DRIVER = "agentloop"
Outcome = tuple[Any, int, int | None, list[Any]]


def _run(connection: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> Outcome:
    """On the connection's thread: execute, fetch every row, close; what the cursor needs afterwards."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose execute is a single call on aiosqlite's thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:  # no cursor opened here: that was a hop of its own
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        return None

    async def _async_soft_close(self) -> None:
        return None  # the rows are already here and the driver's cursor is closed

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        return self._call(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        return self._call(operation, seq_of_parameters, many=True)

    def _call(self, operation: Any, parameters: Any, many: bool) -> None:
        try:
            connection = self._connection._conn  # ValueError once the connection is closed
            outcome: Outcome = await_(
                self._connection._execute(partial(_run, connection, operation, parameters, many))
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows)

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor

    def _idle(self) -> bool:
        """No transaction open on the sqlite3 connection (read here: no call is running on its thread, as
        SQLAlchemy waits for each one)."""
        raw: sqlite3.Connection | None = self._connection._connection
        return raw is not None and not raw.in_transaction

    # sqlite3 itself does nothing on commit or rollback outside a transaction; skip the thread hop then (the
    # pool's reset after a commit, the end of a read-only session).
    def rollback(self) -> None:
        if not self._idle():
            super().rollback()

    def commit(self) -> None:
        if not self._idle():
            super().commit()


class OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


class OneHopDialect(SQLiteDialect_aiosqlite):
    driver = DRIVER
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> OneHopDbapi:
        return OneHopDbapi(__import__("aiosqlite"), __import__("sqlite3"))


registry.register(f"sqlite.{DRIVER}", __name__, "OneHopDialect")

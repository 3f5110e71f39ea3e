"""Group commit: writes that arrive while a transaction commits share the next transaction.

SQLite has one writer at a time, so concurrent writers of small transactions (an agent turn's messages and
events, a lone event) mostly wait for the write lock and pay a commit each (bench/results/events.json: ten
writers of one event each reached fewer events/s than one writer). Here the first caller starts a drain task;
whoever calls while a transaction is open queues up, and the next transaction writes everything queued, with
one commit. PostgreSQL gets the same: fewer, larger transactions.

Nothing is weaker than one transaction per call: a caller returns only after the transaction holding its
write has committed, and it gets its own error. When a shared transaction fails (one write hit an unknown
conversation, say), it is rolled back and each of its writes is retried in a transaction of its own, so the
others are committed and only the failing caller sees the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
Commit = Callable[[Sequence[T]], Awaitable[None]]

MAX_BATCH = 256  # writes per shared transaction; a bound on how long one transaction holds the lock


class GroupCommit(Generic[T]):
    """Queue writes and commit those that arrive together in one transaction.

    `commit(items)` writes a batch of queued items in one transaction: all of them committed when it returns,
    none if it raises.
    """

    def __init__(self, commit: Commit[T], max_batch: int = MAX_BATCH) -> None:
        self._commit_items = commit
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.transactions = 0  # committed or failed shared transactions (for tests and benchmarks)

    async def submit(self, item: T) -> None:
        """Write `item`; return once it is committed, or raise the error its write raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, future))
        if self._drainer is None or self._drainer.done() or self._drainer.get_loop() is not loop:
            self._drainer = loop.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)
        except BaseException:
            # Cancelled with the loop (or a bug): no caller may wait forever on a write that will not happen.
            for _, future in [*batch, *self._pending]:
                if not future.done():
                    future.cancel()
            self._pending.clear()
            raise

    async def _commit(self, batch: Sequence[tuple[T, asyncio.Future[None]]]) -> None:
        self.transactions += 1
        try:
            await self._commit_items([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for entry in batch:  # rolled back: find whose write failed, commit the others
                await self._commit([entry])
            return
        for _, future in batch:
            _settle(future, None)


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():  # its caller was cancelled while waiting; the write itself went ahead
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

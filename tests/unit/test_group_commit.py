"""GroupCommit's own logic with a fake transaction: batching, per-caller errors, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentloop.adapters.storage.group_commit import GroupCommit


class FakeDatabase:
    """Transactions that record what they committed; a write of a value in `bad` fails its transaction."""

    def __init__(self, bad: frozenset[int] = frozenset(), delay: float = 0.0) -> None:
        self.bad = bad
        self.delay = delay
        self.committed: list[list[int]] = []
        self.rolled_back = 0

    async def commit(self, items: Sequence[int]) -> None:
        """One transaction: all of `items` committed, or (a bad one among them) none and the error raised."""
        await asyncio.sleep(self.delay)  # the commit is in flight: others queue up meanwhile
        if any(item in self.bad for item in items):
            self.rolled_back += 1
            raise ValueError(f"bad item {next(item for item in items if item in self.bad)}")
        self.committed.append(list(items))


def group(database: FakeDatabase, max_batch: int = 256) -> GroupCommit[int]:
    return GroupCommit(database.commit, max_batch)


async def test_one_caller_gets_its_own_transaction() -> None:
    database = FakeDatabase()
    commits = group(database)
    await commits.submit(1)
    await commits.submit(2)
    assert database.committed == [[1], [2]]


async def test_callers_arriving_together_or_during_a_commit_share_a_transaction() -> None:
    database = FakeDatabase(delay=0.01)
    commits = group(database)
    await asyncio.gather(*(commits.submit(i) for i in range(3)))
    first = asyncio.create_task(commits.submit(3))
    await asyncio.sleep(0.001)  # its transaction is open: the next nine queue behind it
    await asyncio.gather(first, *(commits.submit(i) for i in range(4, 13)))
    assert database.committed == [[0, 1, 2], [3], list(range(4, 13))]
    assert commits.transactions == 3


async def test_a_shared_transaction_is_bounded() -> None:
    database = FakeDatabase(delay=0.01)
    commits = group(database, max_batch=4)
    await asyncio.gather(*(commits.submit(i) for i in range(10)))
    assert [len(batch) for batch in database.committed] == [4, 4, 2]


async def test_a_failing_write_fails_only_its_caller() -> None:
    database = FakeDatabase(bad=frozenset({3}), delay=0.01)
    commits = group(database)
    results = await asyncio.gather(*(commits.submit(i) for i in range(6)), return_exceptions=True)
    assert [isinstance(result, ValueError) for result in results] == [False] * 3 + [True] + [False] * 2
    assert results[:3] == [None] * 3
    assert sorted(item for batch in database.committed for item in batch) == [0, 1, 2, 4, 5]
    assert database.rolled_back == 2  # the shared transaction, then 3's own


async def test_a_cancelled_caller_does_not_stop_the_others() -> None:
    database = FakeDatabase(delay=0.01)
    commits = group(database)
    first = asyncio.create_task(commits.submit(0))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(commits.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    waiting[0].cancel()
    await asyncio.gather(first, waiting[1])
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    # the cancelled caller's write was already queued: it goes ahead, as a started transaction would
    assert sorted(item for batch in database.committed for item in batch) == [0, 1, 2]


async def test_a_drainer_cancelled_with_its_loop_releases_every_caller() -> None:
    database = FakeDatabase(delay=10.0)
    commits = group(database)
    callers = [asyncio.create_task(commits.submit(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert commits._drainer is not None
    commits._drainer.cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    assert database.committed == []
    database.delay = 0.0
    await commits.submit(7)  # a new drainer starts for the next caller
    assert database.committed == [[7]]


@settings(max_examples=40, deadline=None)
@given(
    items=st.lists(st.integers(min_value=0, max_value=50), max_size=30),
    bad=st.frozensets(st.integers(min_value=0, max_value=50), max_size=5),
    max_batch=st.integers(min_value=1, max_value=8),
)
def test_every_good_write_is_committed_once_and_every_bad_one_fails(
    items: list[int], bad: frozenset[int], max_batch: int
) -> None:
    async def scenario() -> list[object]:
        database = FakeDatabase(bad=bad, delay=0.0005)
        commits = group(database, max_batch)
        results = await asyncio.gather(*(commits.submit(i) for i in items), return_exceptions=True)
        committed = sorted(item for batch in database.committed for item in batch)
        assert committed == sorted(i for i in items if i not in bad)
        assert all(len(batch) <= max_batch for batch in database.committed)
        return list(results)

    results = asyncio.run(scenario())
    for item, result in zip(items, results, strict=True):
        assert (result is None) == (item not in bad)

"""The credential cache's parts: coalesced fresh reads of the revocation counter, and the bounded cache."""

from __future__ import annotations

import asyncio

import pytest

from agentloop.application.credentials import CredentialCache, FreshReader
from agentloop.domain.auth import Principal, Role

ALICE = Principal("u1", "alice", Role.USER)


class Counter:
    """A store's counter whose reads the test releases one at a time."""

    def __init__(self) -> None:
        self.value = 0
        self.started = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def read(self) -> int:
        self.started += 1
        seen = self.value  # the value as of the moment this read starts
        await self.release.wait()
        self.release.clear()
        if self.fail is not None:
            raise self.fail
        return seen


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_during_a_read_share_the_next_one_and_never_get_an_older_value() -> None:
    counter = Counter()
    reader = FreshReader(counter.read)
    first = asyncio.create_task(reader.get())
    await settle()
    assert counter.started == 1
    # A revocation commits while the first read runs; callers from now on must see it.
    counter.value = 1
    later = [asyncio.create_task(reader.get()) for _ in range(5)]
    await settle()
    assert counter.started == 1  # they wait for the next read rather than start their own
    counter.release.set()
    await settle()
    assert await first == 0
    assert counter.started == 2
    counter.release.set()
    assert await asyncio.gather(*later) == [1] * 5
    assert reader.reads == 2


async def test_a_lone_caller_reads_once() -> None:
    counter = Counter()
    reader = FreshReader(counter.read)
    counter.release.set()
    assert await reader.get() == 0
    counter.value = 7
    counter.release.set()
    assert await reader.get() == 7 and reader.reads == 2


async def test_read_errors_reach_every_waiting_caller_and_the_next_read_works() -> None:
    counter = Counter()
    reader = FreshReader(counter.read)
    counter.fail = RuntimeError("database down")
    callers = [asyncio.create_task(reader.get()) for _ in range(3)]
    await settle()
    counter.release.set()
    for caller in callers:
        with pytest.raises(RuntimeError, match="database down"):
            await caller
    counter.fail = None
    counter.release.set()
    assert await reader.get() == 0


async def test_a_caller_giving_up_does_not_cancel_the_read_of_the_others() -> None:
    counter = Counter()
    reader = FreshReader(counter.read)
    quitter, stayer = asyncio.create_task(reader.get()), asyncio.create_task(reader.get())
    await settle()
    quitter.cancel()
    await settle()
    counter.release.set()
    assert await stayer == 0
    assert quitter.cancelled()


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_reader_left_mid_read_by_an_ended_loop_works_on_the_next_one() -> None:
    value = [0]
    stuck = asyncio.Event()

    async def read() -> int:
        if value[0] == 0:
            await stuck.wait()  # never set: the first loop ends during this read
        return value[0]

    reader = FreshReader(read)

    async def first() -> None:
        asyncio.get_running_loop().create_task(reader.get())
        await asyncio.sleep(0.01)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(first())
    loop.close()  # closed with the read still pending (asyncio.run would cancel it first)
    value[0] = 5
    assert asyncio.run(reader.get()) == 5


def test_entries_hold_until_a_revocation_or_their_age() -> None:
    now = [0.0]
    cache = CredentialCache(max_age_s=60.0, clock=lambda: now[0])
    cache.put("d1", ALICE, revocations=3)
    assert cache.get("d1", 3) == ALICE
    assert cache.get("d1", 4) is None  # revoked something since: verify again
    assert cache.get("d1", 3) is None  # and the stale entry is gone
    cache.put("d1", ALICE, revocations=3, lifetime_s=10.0)  # a token valid 10 s more
    now[0] = 9.9
    assert cache.get("d1", 3) == ALICE
    now[0] = 10.0
    assert cache.get("d1", 3) is None
    cache.put("d2", ALICE, revocations=3, lifetime_s=-1.0)  # already expired: not stored
    assert len(cache) == 0 and cache.hits == 2


def test_the_cache_is_bounded_oldest_out() -> None:
    cache = CredentialCache(max_entries=3)
    for index in range(5):
        cache.put(f"d{index}", ALICE, revocations=0)
    assert len(cache) == 3
    assert cache.get("d0", 0) is None and cache.get("d1", 0) is None
    assert cache.get("d4", 0) == ALICE

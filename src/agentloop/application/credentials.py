"""Remembering verified credentials without trusting them after a revocation (ADR-0011).

Verifying a bearer credential costs database reads (the API key; the token's login and user) and, for an
access token, an RS256 signature check: more than the rest of a cheap request. `CredentialCache` keeps the
principal of each credential verified recently, keyed by the credential's SHA-256, together with the value
of the store's revocation counter read *before* that verification. Every revocation (an API key revoked, a
user disabled, a login's tokens revoked) bumps that counter in its own transaction, so an entry is good for
exactly as long as the counter still reads what it read then.

The counter is read for every request, but reads are shared: `FreshReader` gives each caller the result of
a read that *started after the caller asked*, and callers that ask while one read runs share the next one.
A request therefore never sees a counter older than itself: a revocation committed before a request arrived
is always seen by it (no staleness), while under load one small read serves many requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agentloop.domain.auth import Principal

DEFAULT_MAX_ENTRIES = 10_000
# However long an access token lives, an entry is verified again after this long (a bound, not a TTL that
# security depends on: revocations are seen through the counter whatever this is).
DEFAULT_MAX_AGE_S = 300.0


class FreshReader:
    """Coalesced reads of a value that must not be older than the request asking for it."""

    def __init__(self, read: Callable[[], Awaitable[int]]) -> None:
        self._read = read
        self._waiting: asyncio.Future[int] | None = None  # callers for the next read (not started yet)
        self._task: asyncio.Task[None] | None = None
        self.reads = 0

    async def get(self) -> int:
        """The value, read after this call began (possibly together with other callers)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:
            # Left behind by an event loop that ended mid-read: start afresh on this one.
            self._task, self._waiting = None, None
        if self._waiting is None:
            self._waiting = loop.create_future()
            if self._task is None:
                self._task = loop.create_task(self._serve())
        # shield: one caller giving up must not cancel the read the others wait for.
        return await asyncio.shield(self._waiting)

    async def _serve(self) -> None:
        try:
            while self._waiting is not None:
                # Everyone waiting asked before this read starts, so its result is fresh enough for them.
                waiting, self._waiting = self._waiting, None
                self.reads += 1
                try:
                    value = await self._read()
                except asyncio.CancelledError:
                    if not waiting.done():
                        waiting.cancel()
                    raise
                except Exception as exc:  # the callers get the store's error (e.g. database down)
                    if not waiting.done():
                        waiting.set_exception(exc)
                        waiting.exception()  # retrieved here too: callers that gave up must not warn
                else:
                    if not waiting.done():
                        waiting.set_result(value)
        finally:
            self._task = None
            if self._waiting is not None and not self._waiting.done():
                self._waiting.cancel()  # this task was cancelled (shutdown): do not leave callers hanging
                self._waiting = None


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    revocations: int
    expires: float  # on the cache's (monotonic) clock


class CredentialCache:
    """Principals of verified credentials by SHA-256 digest, each with the revocation count it was verified
    under. Bounded: the oldest entries go first when full. Only successes are stored."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self.hits = 0
        self.misses = 0

    def get(self, digest: str, revocations: int) -> Principal | None:
        """The principal verified for `digest` if nothing was revoked since and it has not expired."""
        entry = self._entries.get(digest)
        if entry is None or entry.revocations != revocations or self.clock() >= entry.expires:
            if entry is not None:
                del self._entries[digest]
            self.misses += 1
            return None
        self.hits += 1
        return entry.principal

    def put(
        self, digest: str, principal: Principal, revocations: int, lifetime_s: float | None = None
    ) -> None:
        """Remember a principal verified after the counter read `revocations`; `lifetime_s` is how long the
        credential itself stays valid (an access token's remaining lifetime), None for no expiry."""
        age = self.max_age_s if lifetime_s is None else min(self.max_age_s, lifetime_s)
        if age <= 0:
            return
        self._entries.pop(digest, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = _Entry(principal, revocations, self.clock() + age)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

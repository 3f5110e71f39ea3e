"""Resilience for outbound dependencies: a circuit breaker per dependency and an ordered fallback list of
inference backends (see docs/adr/0008-production-backends.md).

The breaker is a plain state machine with an injected clock, so tests drive time by hand:

    closed --(failure_threshold consecutive failures)--> open --(reset_timeout_s)--> half-open
    half-open --(the one trial call succeeds)--> closed;  half-open --(it fails)--> open again
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from agentloop.application.ports import AdapterHost, Completion, GenerationRequest, InferenceEngine, Token
from agentloop.errors import InferenceError, ValidationError

logger = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Stops calling a failing dependency for `reset_timeout_s`, then lets one trial call through."""

    name: str
    failure_threshold: int = 5
    reset_timeout_s: float = 15.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = field(default=BreakerState.CLOSED, init=False)
    failures: int = field(default=0, init=False)
    opened_at: float = field(default=0.0, init=False)
    trial_started_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.reset_timeout_s <= 0:
            raise ValueError("reset_timeout_s must be positive")

    def allow(self) -> bool:
        """May a call go out now? In half-open only one trial at a time (a lost trial expires)."""
        now = self.clock()
        if self.state == BreakerState.CLOSED:
            return True
        if self.state == BreakerState.OPEN:
            if now - self.opened_at < self.reset_timeout_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self.trial_started_at = None
        if self.trial_started_at is not None and now - self.trial_started_at < self.reset_timeout_s:
            return False
        self.trial_started_at = now
        return True

    def record_success(self) -> None:
        if self.state != BreakerState.CLOSED:
            logger.info("circuit %s closed: the dependency answers again", self.name)
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.trial_started_at = None

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            if self.state != BreakerState.OPEN:
                logger.warning("circuit %s opened after %d failure(s)", self.name, self.failures)
            self.state = BreakerState.OPEN
            self.opened_at = self.clock()
            self.trial_started_at = None

    @property
    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when calls may go out)."""
        if self.state != BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_timeout_s - (self.clock() - self.opened_at))

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state.value, "failures": self.failures, "retry_after_s": self.retry_after_s}


@dataclass
class Backend:
    name: str
    engine: InferenceEngine
    breaker: CircuitBreaker


class BackendUnavailableError(InferenceError):
    """No backend could answer: each one's circuit is open or its call failed."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("no inference backend is available: " + "; ".join(reasons))
        self.reasons = list(reasons)


# Errors that describe the request, not the backend: no fallback and no breaker failure for these.
_CALLER_ERRORS = (ValidationError,)


class FallbackEngine:
    """An InferenceEngine over an ordered list of backends, each behind its own circuit breaker.

    A request goes to the first backend whose circuit allows it; if that backend fails before its first
    token, the next one is tried. Once tokens have reached the caller a failure is raised as is: text from
    two models cannot be spliced into one reply.
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("FallbackEngine needs at least one backend")
        self.backends = list(backends)

    @property
    def model_version(self) -> str:
        return self.backends[0].engine.model_version

    @property
    def context_size(self) -> int:
        # A prompt must fit whichever backend ends up answering it.
        return min(backend.engine.context_size for backend in self.backends)

    async def count_tokens(self, text: str) -> int:
        reasons: list[str] = []
        for backend in self._allowed(reasons):
            try:
                count = await backend.engine.count_tokens(text)
            except InferenceError as exc:
                backend.breaker.record_failure()
                reasons.append(f"{backend.name}: {exc}")
                continue
            backend.breaker.record_success()
            return count
        raise BackendUnavailableError(reasons)

    async def probe(self) -> None:
        """Readiness: some backend answers (its own probe, or a token count)."""
        reasons: list[str] = []
        for backend in self._allowed(reasons):
            probe = getattr(backend.engine, "probe", None)
            try:
                await (probe() if probe else backend.engine.count_tokens("ping"))
            except InferenceError as exc:
                backend.breaker.record_failure()
                reasons.append(f"{backend.name}: {exc}")
                continue
            backend.breaker.record_success()
            return
        raise BackendUnavailableError(reasons)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Token | Completion, None]:
        reasons: list[str] = []
        for backend in self._allowed(reasons):
            started = False
            try:
                async with aclosing(backend.engine.stream(request)) as items:
                    async for item in items:
                        if isinstance(item, Completion):
                            # Before the yield: a consumer may stop reading at the completion.
                            backend.breaker.record_success()
                            yield item
                            return
                        started = True
                        yield item
                raise InferenceError("the stream ended without a completion")
            except _CALLER_ERRORS:
                backend.breaker.record_success()
                raise
            except InferenceError as exc:
                backend.breaker.record_failure()
                if started:
                    raise
                logger.warning("backend %s failed, trying the next one: %s", backend.name, exc)
                reasons.append(f"{backend.name}: {exc}")
        raise BackendUnavailableError(reasons)

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        """Switch every backend that can host adapters; the main backend's refusal is the caller's error."""
        for index, backend in enumerate(self.backends):
            if not callable(getattr(backend.engine, "serve_version", None)):
                continue
            host = cast(AdapterHost, backend.engine)
            try:
                await host.serve_version(version_id, adapter_path)
            except InferenceError as exc:
                if index == 0:
                    raise
                logger.warning("fallback backend %s keeps its version: %s", backend.name, exc)

    def health(self) -> list[dict[str, Any]]:
        return [
            {"name": b.name, "version": b.engine.model_version, **b.breaker.snapshot()} for b in self.backends
        ]

    async def close(self) -> None:
        for backend in self.backends:
            close = getattr(backend.engine, "close", None)
            if close is not None:
                await close()

    def _allowed(self, reasons: list[str]) -> Iterator[Backend]:
        # Lazy: asking a half-open breaker starts its trial, so only ask when that backend is next.
        for backend in self.backends:
            if backend.breaker.allow():
                yield backend
            else:
                wait = backend.breaker.retry_after_s
                reasons.append(f"{backend.name}: circuit open (next trial in {wait:.0f} s)")

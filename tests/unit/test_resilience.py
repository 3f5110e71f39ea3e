"""The circuit breaker (a hypothesis state machine against a reference model) and the fallback engine."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from agentloop.application.ports import Completion, GenerationRequest, Token, complete
from agentloop.application.resilience import (
    Backend,
    BackendUnavailableError,
    BreakerState,
    CircuitBreaker,
    FallbackEngine,
)
from agentloop.errors import ContextOverflowError, InferenceError
from fakes import FakeEngine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BreakerMachine(RuleBasedStateMachine):
    """Any sequence of calls, outcomes and waits keeps the breaker equal to a tiny reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.threshold, self.reset = 3, 10.0
        self.breaker = CircuitBreaker("dep", self.threshold, self.reset, clock=self.clock)
        self.model_state = "closed"
        self.model_failures = 0
        self.opened_at = 0.0
        self.trial_at: float | None = None

    @rule(seconds=st.floats(min_value=0, max_value=25))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def ask(self) -> None:
        now = self.clock.now
        expected = True
        if self.model_state == "open":
            if now - self.opened_at < self.reset:
                expected = False
            else:
                self.model_state, self.trial_at = "half_open", None
        if self.model_state == "half_open":
            if self.trial_at is not None and now - self.trial_at < self.reset:
                expected = False
            else:
                self.trial_at = now
        assert self.breaker.allow() is expected

    @rule()
    def succeed(self) -> None:
        self.breaker.record_success()
        self.model_state, self.model_failures, self.trial_at = "closed", 0, None

    @rule()
    def fail(self) -> None:
        self.breaker.record_failure()
        self.model_failures += 1
        if self.model_state == "half_open" or self.model_failures >= self.threshold:
            self.model_state, self.opened_at, self.trial_at = "open", self.clock.now, None

    @invariant()
    def same_state(self) -> None:
        assert self.breaker.state.value == self.model_state
        assert (self.breaker.retry_after_s > 0) == (
            self.model_state == "open" and self.clock.now - self.opened_at < self.reset
        )


TestBreakerStateMachine = BreakerMachine.TestCase
TestBreakerStateMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_breaker_opens_after_threshold_then_half_opens_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("db", failure_threshold=2, reset_timeout_s=5, clock=clock)
    breaker.record_failure()
    assert breaker.allow() and breaker.state == BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state == BreakerState.OPEN and not breaker.allow()
    assert breaker.snapshot() == {"state": "open", "failures": 2, "retry_after_s": 5.0}
    clock.now += 5
    assert breaker.allow() and breaker.state == BreakerState.HALF_OPEN
    assert not breaker.allow()  # one trial at a time
    breaker.record_success()
    assert breaker.state == BreakerState.CLOSED and breaker.failures == 0


def test_breaker_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout_s"):
        CircuitBreaker("x", reset_timeout_s=0)


class BrokenMidway(FakeEngine):
    """Yields one token, then fails: a backend dying mid-answer."""

    async def stream(self, request: GenerationRequest):  # type: ignore[override]
        yield Token("par")
        raise InferenceError("connection reset")


def backends(*engines: FakeEngine, clock: Clock | None = None) -> list[Backend]:
    return [
        Backend(f"b{i}", engine, CircuitBreaker(f"b{i}", 2, 10.0, clock=clock or Clock()))
        for i, engine in enumerate(engines)
    ]


async def test_fallback_uses_the_next_backend_when_the_first_fails_before_any_token() -> None:
    first = FakeEngine([InferenceError("refused"), InferenceError("refused")], model_version="v-main")
    second = FakeEngine(["from the fallback", "again"], model_version="v-fallback")
    engine = FallbackEngine(backends(first, second))
    completion = await complete(engine, GenerationRequest("hi"))
    assert completion.text == "from the fallback" and completion.model_version == "v-fallback"
    await complete(engine, GenerationRequest("hi"))
    main = engine.backends[0].breaker
    assert main.state == BreakerState.OPEN and engine.health()[0]["state"] == "open"
    # With the circuit open the main backend is not even asked.
    second.script("third")
    assert (await complete(engine, GenerationRequest("hi"))).text == "third"
    assert len(first.requests) == 2


async def test_fallback_never_splices_two_models_into_one_reply() -> None:
    engine = FallbackEngine(backends(BrokenMidway(), FakeEngine(["unused"])))
    with pytest.raises(InferenceError, match="connection reset"):
        async for _ in engine.stream(GenerationRequest("hi")):
            pass
    assert engine.backends[1].engine.requests == []  # type: ignore[attr-defined]


async def test_all_backends_down_is_one_clear_error() -> None:
    engine = FallbackEngine(
        backends(FakeEngine([InferenceError("a down")]), FakeEngine([InferenceError("b down")]))
    )
    with pytest.raises(BackendUnavailableError, match="b0: a down; b1: b down"):
        await complete(engine, GenerationRequest("hi"))


async def test_a_caller_error_is_not_a_backend_failure() -> None:
    first = FakeEngine([ContextOverflowError(5000, 4000)])
    engine = FallbackEngine(backends(first, FakeEngine(["unused"])))
    with pytest.raises(ContextOverflowError):
        await complete(engine, GenerationRequest("hi"))
    assert engine.backends[0].breaker.failures == 0


async def test_open_circuit_recovers_through_a_half_open_trial() -> None:
    clock = Clock()
    main = FakeEngine([InferenceError("x"), InferenceError("x"), "back"])
    engine = FallbackEngine(backends(main, clock=clock))
    for _ in range(2):
        with pytest.raises(BackendUnavailableError):
            await complete(engine, GenerationRequest("hi"))
    with pytest.raises(BackendUnavailableError, match="circuit open"):
        await complete(engine, GenerationRequest("hi"))
    clock.now += 10
    assert (await complete(engine, GenerationRequest("hi"))).text == "back"
    assert engine.backends[0].breaker.state == BreakerState.CLOSED


class Host(FakeEngine):
    def __init__(self, fail: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.fail = fail
        self.served: list[str] = []

    async def serve_version(self, version_id: str, adapter_path: object) -> None:
        if self.fail:
            raise InferenceError("cannot load adapters")
        self.served.append(version_id)
        self._version = version_id


async def test_versions_switch_on_every_backend_that_can_host_them() -> None:
    main, spare = Host(), Host(fail=True)
    engine = FallbackEngine(backends(main, spare))
    await engine.serve_version("v2", None)
    assert main.served == ["v2"] and engine.model_version == "v2"
    failing_main = FallbackEngine(backends(Host(fail=True), Host()))
    with pytest.raises(InferenceError, match="cannot load adapters"):
        await failing_main.serve_version("v2", None)


async def test_token_counts_and_probe_fall_back_too() -> None:
    class NoTokenizer(FakeEngine):
        async def count_tokens(self, text: str) -> int:
            raise InferenceError("down")

    engine = FallbackEngine(backends(NoTokenizer(), FakeEngine(context_size=2048)))
    assert await engine.count_tokens("abcdefgh") == 2
    await engine.probe()
    assert engine.context_size == 2048
    dead = FallbackEngine(backends(NoTokenizer()))
    with pytest.raises(BackendUnavailableError):
        await dead.count_tokens("x")
    with pytest.raises(BackendUnavailableError):
        await dead.probe()


def test_fallback_needs_a_backend() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FallbackEngine([])


async def test_stream_that_ends_without_completion_counts_as_failure() -> None:
    class Truncated(FakeEngine):
        async def stream(self, request: GenerationRequest):  # type: ignore[override]
            if False:
                yield Completion("", None, "stop", "x")  # type: ignore[arg-type]

    engine = FallbackEngine(backends(Truncated(), FakeEngine(["ok"])))
    assert (await complete(engine, GenerationRequest("hi"))).text == "ok"

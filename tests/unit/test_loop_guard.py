"""The loop guard of constrained decoding: which token would extend a loop."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from agentloop.adapters.inference.llama import (
    LOOP_MAX_PERIOD,
    LOOP_SPAN,
    _GreedyGrammar,
    loop_continuation,
)

ZERO, ONE, SEVEN, TIMES, SPACE, SIX = 15, 16, 22, 900, 5, 21


def test_a_run_of_one_token_is_stopped_at_the_span() -> None:
    number = [ONE, SEVEN, TIMES, SPACE, ONE]
    assert loop_continuation([*number, *[ZERO] * (LOOP_SPAN - 1)]) is None
    assert loop_continuation([*number, *[ZERO] * LOOP_SPAN]) == ZERO


def test_a_chunk_may_appear_three_times_but_not_four() -> None:
    chunk = [TIMES, SPACE, SIX, ZERO]  # " * 60"
    start = [ONE, SEVEN]
    assert loop_continuation([*start, *chunk * 2]) is None
    assert loop_continuation([*start, *chunk * 3]) == TIMES  # a fourth " * 60" is refused


def test_a_long_chunk_needs_three_copies() -> None:
    date = list(range(100, 111))  # an 11-token date
    assert loop_continuation([1, *date, *date]) is None
    assert loop_continuation([1, *date * 3]) == date[0]


def test_chunks_longer_than_the_longest_period_pass() -> None:
    chunk = list(range(200, 200 + LOOP_MAX_PERIOD + 1))
    assert loop_continuation(chunk * 4) is None


def test_short_and_varied_sequences_pass() -> None:
    assert loop_continuation([]) is None
    assert loop_continuation([ZERO] * (LOOP_SPAN - 1)) is None
    assert loop_continuation(list(range(40))) is None


@given(st.lists(st.integers(min_value=0, max_value=3), max_size=80))
def test_the_refused_token_is_the_one_that_continues_a_periodic_tail(tokens: list[int]) -> None:
    token = loop_continuation(tokens)
    if token is None:
        return
    # some period p: the tail is periodic over max(LOOP_SPAN, 3p) tokens, and the token repeats tokens[-p]
    assert any(
        len(tokens) >= max(LOOP_SPAN, 3 * p)
        and tokens[-p] == token
        and all(tokens[-i] == tokens[-i - p] for i in range(1, max(LOOP_SPAN, 3 * p) - p + 1))
        for p in range(1, LOOP_MAX_PERIOD + 1)
    )


@given(st.lists(st.integers(min_value=0, max_value=10**6), unique=True, max_size=60))
def test_tokens_that_never_repeat_never_loop(tokens: list[int]) -> None:
    assert loop_continuation(tokens) is None


def test_a_run_the_prompt_holds_may_be_copied() -> None:
    question = [300, ONE, *[ZERO] * 20, 301]
    call = [TIMES, ONE, *[ZERO] * LOOP_SPAN]
    assert loop_continuation(call) == ZERO
    assert loop_continuation(call, question) is None  # copying 1 and twenty zeros from the question
    longer = [*call, *[ZERO] * 8]  # twenty zeros copied: a twenty-first is not in the question
    assert loop_continuation(longer, question) == ZERO


class _Grammar(_GreedyGrammar):
    """The guard's own logic over a fake grammar that allows a fixed set of tokens (no llama.cpp sampler)."""

    def __init__(self, allowed: set[int], tokens: list[int]) -> None:
        self.allowed = allowed
        self.tokens = tokens
        self.prompt = ()
        self.full_checks = 0

    def allows(self, token: int, logits: Any) -> bool:
        return token in self.allowed

    def mask(self, logits: Any) -> Any:
        self.full_checks += 1
        return np.array([x if i in self.allowed else -np.inf for i, x in enumerate(logits)], dtype=np.single)


LOOPING = [1, *[ZERO] * LOOP_SPAN]


def test_guard_leaves_logits_alone_without_a_loop() -> None:
    logits = np.arange(30, dtype=np.single)
    assert _Grammar(set(range(30)), [1, 2, 3]).guard(logits) is logits


def test_guard_refuses_the_loop_token_and_masks_once_when_needed() -> None:
    logits = np.zeros(30, dtype=np.single)
    logits[ZERO], logits[SEVEN], logits[SIX] = 5.0, 4.0, 3.0
    free = _Grammar(set(range(30)), LOOPING)
    assert int(free.guard(logits).argmax()) == SEVEN and free.full_checks == 0
    strict = _Grammar({ZERO, SIX}, LOOPING)  # the next best (SEVEN) is not allowed: masked in the guard
    guarded = strict.guard(logits)
    assert int(guarded.argmax()) == SIX and strict.full_checks == 1
    assert np.isneginf(guarded[ZERO]) and np.isneginf(guarded[SEVEN])
    assert logits[ZERO] == 5.0  # the caller's row is not modified


def test_guard_gives_way_when_the_grammar_allows_only_the_loop_token() -> None:
    logits = np.zeros(30, dtype=np.single)
    logits[ZERO] = 5.0
    assert _Grammar({ZERO}, LOOPING).guard(logits) is logits

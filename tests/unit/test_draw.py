"""Draw: temperature sampling from a logits row as llama.cpp's chain does it (nucleus, temperature, seed)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentloop.adapters.inference.llama import Draw
from agentloop.errors import InferenceError


def row(*values: float, size: int = 2000) -> np.ndarray:
    logits = np.full(size, -30.0, dtype=np.float32)
    logits[: len(values)] = values
    return logits


def test_draws_follow_the_tempered_distribution() -> None:
    logits = row(2.0, 1.0, 0.0)
    draw = Draw(temperature=1.0, top_p=1.0, seed=3)
    counts = Counter(draw(logits) for _ in range(4000))
    p = np.exp([2.0, 1.0, 0.0])
    p /= p.sum()
    for token in range(3):
        assert counts[token] / 4000 == pytest.approx(p[token], abs=0.03)


def test_the_nucleus_is_taken_on_raw_probabilities_and_rejected_tokens_never_come() -> None:
    logits = row(5.0, 4.9, 0.0, 0.0)
    logits[1] = -np.inf  # rejected by the grammar
    draw = Draw(temperature=2.0, top_p=0.9, seed=1)
    assert {draw(logits) for _ in range(300)} == {0}
    wide = Draw(temperature=1.0, top_p=0.99, seed=1)
    assert {wide(row(1.0, 1.0, 1.0)) for _ in range(300)} == {0, 1, 2}


def test_a_seed_repeats_its_draws_and_a_flat_row_still_samples() -> None:
    flat = np.zeros(3000, dtype=np.float32)  # the nucleus is wider than the first 512 candidates
    one, again, other = Draw(0.8, 0.95, seed=11), Draw(0.8, 0.95, seed=11), Draw(0.8, 0.95, seed=12)
    assert [one(flat) for _ in range(5)] == [again(flat) for _ in range(5)]
    assert len({other(flat) for _ in range(50)}) > 40


def test_nothing_allowed_is_an_error() -> None:
    with pytest.raises(InferenceError):
        Draw(0.5, 0.9, seed=0)(np.full(10, -np.inf, dtype=np.float32))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=-20, max_value=20), min_size=1, max_size=40),
    st.floats(min_value=0.05, max_value=2.0),
    st.floats(min_value=0.05, max_value=1.0),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_a_draw_is_always_an_allowed_token(
    values: list[float], temperature: float, top_p: float, seed: int
) -> None:
    logits = np.array(values, dtype=np.float32)
    banned = np.arange(len(values)) % 3 == 1
    if banned.all():
        return
    logits[banned] = -np.inf
    token = Draw(temperature, top_p, seed)(logits)
    assert 0 <= token < len(values) and not banned[token]

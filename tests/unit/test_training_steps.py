"""capped_steps: `max_epochs` caps a job's optimizer steps at that many passes over its training examples."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from agentloop.application.learning.service import capped_steps


def test_few_labels_get_few_steps() -> None:
    params = {"max_steps": 16, "batch_size": 4, "max_epochs": 3.0, "learning_rate": 5e-4}
    assert capped_steps(params, 5)["max_steps"] == 4  # ceil(3 * 5 / 4)
    assert capped_steps(params, 100)["max_steps"] == 16
    assert capped_steps(params, 5)["learning_rate"] == 5e-4


def test_no_cap_without_epochs_or_examples() -> None:
    assert capped_steps({"max_steps": 16, "batch_size": 4}, 3)["max_steps"] == 16
    assert capped_steps({"max_steps": 16, "batch_size": 4, "max_epochs": 0}, 3)["max_steps"] == 16
    assert capped_steps({"max_steps": 16, "max_epochs": 2.0}, 0)["max_steps"] == 16
    assert capped_steps({"max_epochs": 2.0}, 5) == {"max_epochs": 2.0}


@given(
    st.integers(min_value=1, max_value=500),
    st.integers(min_value=1, max_value=64),
    st.floats(min_value=0.01, max_value=20),
    st.integers(min_value=1, max_value=10_000),
)
def test_the_cap_is_between_one_step_and_max_steps(
    steps: int, batch: int, epochs: float, examples: int
) -> None:
    capped = capped_steps({"max_steps": steps, "batch_size": batch, "max_epochs": epochs}, examples)
    assert 1 <= capped["max_steps"] <= steps
    assert capped["max_steps"] == min(steps, max(1, math.ceil(epochs * examples / batch)))

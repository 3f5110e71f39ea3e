"""The promotion gate: better overall, no suite clearly worse, same items."""

from __future__ import annotations

import json

import pytest

from agentloop.application.learning.evaluation import EvalReport, ItemResult, summarise
from agentloop.application.learning.gate import decide


def report(version: str, **correct_per_suite: tuple[int, int]) -> EvalReport:
    """A report where suite S has `right` correct items out of `n`; item ids are stable per suite."""
    items = [
        ItemResult(f"{suite}-{i}", suite, i < right, [], "answer", 10.0)
        for suite, (right, n) in correct_per_suite.items()
        for i in range(n)
    ]
    return summarise(items, version, 0)


def test_a_better_candidate_is_promoted() -> None:
    decision = decide(report("new", math=(8, 10), chat=(7, 10)), report("old", math=(6, 10), chat=(7, 10)))
    assert decision.promote
    assert decision.candidate_accuracy == 0.75 and decision.serving_accuracy == 0.65
    assert decision.suite_deltas == {"chat": 0.0, "math": pytest.approx(0.2)}
    assert len(decision.reasons) == 1 and "0.650 -> 0.750" in decision.reasons[0]


def test_a_worse_candidate_is_refused() -> None:
    decision = decide(report("new", math=(5, 10)), report("old", math=(8, 10)))
    assert not decision.promote
    assert any("accuracy gain -0.300 is below" in r for r in decision.reasons)
    assert any("suite math regressed by 0.300" in r for r in decision.reasons)


def test_a_tie_is_refused() -> None:
    decision = decide(report("new", math=(8, 10)), report("old", math=(8, 10)))
    assert not decision.promote and decision.reasons == ["accuracy gain +0.000 is below the required 0.02"]


def test_a_gain_just_at_the_threshold_counts_despite_float_error() -> None:
    candidate, serving = report("new", math=(35, 50)), report("old", math=(34, 50))
    assert candidate.accuracy - serving.accuracy < 0.02  # 0.7 - 0.68 in floating point
    assert decide(candidate, serving).promote


def test_a_regression_in_one_suite_blocks_an_overall_gain() -> None:
    candidate = report("new", math=(20, 20), dates=(12, 20))
    serving = report("old", math=(10, 20), dates=(14, 20))
    decision = decide(candidate, serving)
    assert candidate.accuracy > serving.accuracy + 0.02
    assert not decision.promote
    assert decision.reasons == ["suite dates regressed by 0.100 (more than 0.05)"]
    assert decide(candidate, serving, max_regression=0.1).promote


def test_a_regression_within_the_allowance_is_accepted() -> None:
    candidate = report("new", math=(20, 20), dates=(19, 20))
    serving = report("old", math=(10, 20), dates=(20, 20))
    assert decide(candidate, serving).promote


def test_reports_on_different_items_are_refused() -> None:
    decision = decide(report("new", math=(10, 10)), report("old", math=(0, 9)))
    assert not decision.promote
    assert decision.reasons == ["evaluated on different items (0 only for serving, 1 only for candidate)"]
    other_suite = decide(report("new", math=(10, 10)), report("old", dates=(0, 10)))
    assert not other_suite.promote and other_suite.suite_deltas == {}


def test_empty_reports_are_refused() -> None:
    decision = decide(report("new"), report("old"))
    assert not decision.promote and decision.reasons == ["no evaluation items"]


def test_thresholds_are_parameters() -> None:
    candidate, serving = report("new", math=(9, 10)), report("old", math=(8, 10))
    assert decide(candidate, serving, min_gain=0.1).promote
    assert not decide(candidate, serving, min_gain=0.15).promote


def test_the_decision_is_json() -> None:
    decision = decide(report("new", math=(9, 10)), report("old", math=(8, 10)))
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["promote"] is True and set(data) == {
        "promote",
        "reasons",
        "candidate_accuracy",
        "serving_accuracy",
        "suite_deltas",
    }


def test_one_item_of_a_small_suite_is_noise_two_are_a_regression() -> None:
    serving = report("old", math=(2, 6), direct=(2, 6), units=(0, 6))
    one = report("new", math=(6, 6), direct=(1, 6), units=(2, 6))
    assert decide(one, serving).promote
    two = report("new", math=(6, 6), direct=(0, 6), units=(2, 6))
    decision = decide(two, serving)
    assert not decision.promote
    assert decision.reasons == ["suite direct regressed by 0.333 (more than 0.167)"]

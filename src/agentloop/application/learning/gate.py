"""The promotion gate: a candidate replaces the serving version only if it is measurably better overall and
no suite gets clearly worse, judged on the same evaluation items. "Clearly worse" is more than
`max_regression` and more than one of the suite's items: on the 4-6 items a suite that `agentloop improve`
can afford, a single item is noise (four measured runs: the one-item rule rejected two candidates 7 and 13
points better on every held-out item, and kept out the two that were worse)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agentloop.application.learning.evaluation import EvalReport

# Accuracies are means of a few dozen items; compare with a little slack so 0.70 - 0.68 counts as 0.02.
EPSILON = 1e-9


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    candidate_accuracy: float
    serving_accuracy: float
    suite_deltas: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: EvalReport, serving: EvalReport, min_gain: float = 0.02, max_regression: float = 0.05
) -> GateDecision:
    """Promote if accuracy gains at least `min_gain` and no suite loses more than `max_regression` and more
    than one of its items."""
    deltas = {
        name: candidate.suites[name].accuracy - serving.suites[name].accuracy
        for name in sorted(candidate.suites.keys() & serving.suites.keys())
    }
    gain = candidate.accuracy - serving.accuracy
    refusals = _refusals(candidate, serving, deltas, gain, min_gain, max_regression)
    accepted = f"accuracy {serving.accuracy:.3f} -> {candidate.accuracy:.3f} ({gain:+.3f} >= {min_gain})"
    return GateDecision(
        promote=not refusals,
        reasons=refusals or [accepted],
        candidate_accuracy=candidate.accuracy,
        serving_accuracy=serving.accuracy,
        suite_deltas=deltas,
    )


def _refusals(
    candidate: EvalReport,
    serving: EvalReport,
    deltas: dict[str, float],
    gain: float,
    min_gain: float,
    max_regression: float,
) -> list[str]:
    if candidate.item_ids != serving.item_ids:
        missing = len(serving.item_ids - candidate.item_ids)
        extra = len(candidate.item_ids - serving.item_ids)
        return [f"evaluated on different items ({missing} only for serving, {extra} only for candidate)"]
    if not candidate.item_ids:
        return ["no evaluation items"]
    reasons = []
    if gain < min_gain - EPSILON:
        reasons.append(f"accuracy gain {gain:+.3f} is below the required {min_gain}")
    for name, delta in deltas.items():
        items = serving.suites[name].n
        tolerance = max(max_regression, 1 / items if items else 0.0)
        if delta < -tolerance - EPSILON:
            reasons.append(f"suite {name} regressed by {-delta:.3f} (more than {tolerance:.3g})")
    return reasons


__all__ = ["GateDecision", "decide"]

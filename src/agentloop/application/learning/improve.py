"""`improve`: K cycles of label (GroupThink, no human) -> dataset -> train -> evaluate -> gate -> promote.

The report holds the base accuracy, the accuracy of each cycle's candidate and of the version serving after
it on the held-out suites, the examples gained, the valid-call rate and the time of every stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentloop.application.learning.labeling import Labeler, LabelProgress
from agentloop.application.learning.registry import VersionStore
from agentloop.application.learning.service import LearningService
from agentloop.domain.learning import JobStatus, ModelVersion
from agentloop.domain.model import utcnow


@dataclass(frozen=True)
class Score:
    version: str
    accuracy: float
    suites: dict[str, float]
    valid_call_rate: float | None
    items: int

    @classmethod
    def of(cls, report: Mapping[str, Any]) -> Score:
        calls = [call for item in report.get("items", []) for call in item["calls"]]
        return cls(
            version=str(report.get("version", "?")),
            accuracy=float(report["accuracy"]),
            suites={name: float(s["accuracy"]) for name, s in report["suites"].items()},
            valid_call_rate=sum(bool(c["valid"]) for c in calls) / len(calls) if calls else None,
            items=len(report.get("items", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "accuracy": round(self.accuracy, 4),
            "suites": {name: round(value, 4) for name, value in self.suites.items()},
            "valid_call_rate": None if self.valid_call_rate is None else round(self.valid_call_rate, 4),
            "items": self.items,
        }


@dataclass
class CycleReport:
    cycle: int
    labeling: dict[str, Any]
    job_id: str
    status: str
    error: str | None = None
    version: str | None = None
    promoted: bool = False
    gate: list[str] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    examples_gained: int = 0
    candidate: Score | None = None
    serving_before: Score | None = None
    serving_after: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def examples_total(self) -> int:
        """Examples in the cycle's dataset (train and validation), summed over their signals."""
        return sum(int(count) for name, count in self.dataset.items() if name != "train")

    def to_dict(self) -> dict[str, Any]:
        return {
            "cycle": self.cycle,
            "job_id": self.job_id,
            "status": self.status,
            "error": self.error,
            "version": self.version,
            "promoted": self.promoted,
            "gate": self.gate,
            "labeling": self.labeling,
            "dataset": self.dataset,
            "examples_total": self.examples_total,
            "examples_gained": self.examples_gained,
            "candidate": None if self.candidate is None else self.candidate.to_dict(),
            "serving_before": None if self.serving_before is None else self.serving_before.to_dict(),
            "serving_after": self.serving_after,
            "timings_s": self.timings_s,
        }


@dataclass
class ImproveReport:
    settings: dict[str, Any]
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    base: Score | None = None
    cycles: list[CycleReport] = field(default_factory=list)
    serving: Score | None = None

    @property
    def seconds(self) -> float:
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    def versions(self) -> list[Score]:
        """Accuracy per version in the order measured: the base, then each cycle's candidate."""
        scores = [] if self.base is None else [self.base]
        return scores + [c.candidate for c in self.cycles if c.candidate is not None]

    def to_dict(self) -> dict[str, Any]:
        base = self.base.accuracy if self.base else None
        final = self.serving.accuracy if self.serving else None
        return {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "total_seconds": round(self.seconds, 1),
            "settings": self.settings,
            "base": None if self.base is None else self.base.to_dict(),
            "cycles": [cycle.to_dict() for cycle in self.cycles],
            "versions": [score.to_dict() for score in self.versions()],
            "serving": None if self.serving is None else self.serving.to_dict(),
            "gain_points": None if base is None or final is None else round(100 * (final - base), 1),
            "examples_gained": sum(c.examples_gained for c in self.cycles),
        }


class Improve:
    """Runs the cycles; `on_progress` sees every stage (label, dataset, train, evaluate, gate)."""

    def __init__(
        self,
        labeler: Labeler,
        learning: LearningService,
        versions: VersionStore,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.labeler = labeler
        self.learning = learning
        self.versions = versions
        self.settings = dict(settings or {})

    async def run(
        self,
        cycles: int,
        label_per_cycle: int,
        params: Mapping[str, Any] | None = None,
        on_progress: LabelProgress | None = None,
    ) -> ImproveReport:
        report = ImproveReport({**self.settings, "cycles": cycles, "label_per_cycle": label_per_cycle})
        previous_examples = 0
        for number in range(1, cycles + 1):
            cycle = await self._cycle(number, label_per_cycle, params or {}, on_progress)
            total = cycle.examples_total
            cycle.examples_gained = max(total - previous_examples, 0)
            previous_examples = max(previous_examples, total)
            report.cycles.append(cycle)
            if report.base is None and cycle.serving_before is not None:
                report.base = cycle.serving_before
        serving = await self.versions.serving_version()
        report.serving = self._score_of(report, serving)
        report.finished_at = utcnow()
        return report

    async def _cycle(
        self, number: int, limit: int, params: Mapping[str, Any], on_progress: LabelProgress | None
    ) -> CycleReport:
        async def progress(update: Mapping[str, Any]) -> None:
            if on_progress is not None:
                await on_progress({"cycle": number, **update})

        started = time.perf_counter()
        labeling = await self.labeler.label(limit, progress)
        label_s = time.perf_counter() - started
        job = await self.learning.submit(params, reason=f"improve cycle {number}")
        job = await self.learning.run(job.id, progress)
        timings = {"label": round(label_s, 2), **job.progress.get("timings_s", {})}
        cycle = CycleReport(
            cycle=number,
            labeling=labeling.to_dict(),
            job_id=job.id,
            status=str(job.status),
            error=job.error,
            version=job.version_id,
            promoted=bool(job.progress.get("promoted", False)),
            gate=list(job.progress.get("gate", [])),
            timings_s=timings,
        )
        if job.version_id is not None and job.status == JobStatus.COMPLETED:
            version = await self.versions.get_version(job.version_id)
            metrics = version.metrics
            cycle.dataset = dict(metrics.get("dataset", {}))
            cycle.dataset.update(train=job.progress.get("examples", 0))
            if "evaluation" in metrics:
                cycle.candidate = Score.of(metrics["evaluation"])
            if "serving_evaluation" in metrics:
                cycle.serving_before = Score.of(metrics["serving_evaluation"])
        serving = await self.versions.serving_version()
        cycle.serving_after = serving.id if serving else None
        return cycle

    @staticmethod
    def _score_of(report: ImproveReport, serving: ModelVersion | None) -> Score | None:
        if serving is None:
            return None
        known = {score.version: score for score in report.versions()}
        for cycle in report.cycles:
            if cycle.version == serving.id and cycle.candidate is not None:
                return cycle.candidate
        return known.get(serving.id, report.base if serving.is_base else None)


def markdown(report: Mapping[str, Any], chart: str | None = None) -> str:
    """The report as Markdown (what `improve` writes beside the JSON)."""
    lines = ["# agentloop improve: self-training from GroupThink consensus", ""]
    base, serving = report.get("base"), report.get("serving")
    settings = report.get("settings", {})
    lines += [
        f"Run {report['started_at']} to {report['finished_at']} ({report['total_seconds']:.0f} s in all).",
        "",
        "| version | accuracy | " + " | ".join(_suite_names(report)) + " | valid calls |",
        "|---|---|" + "---|" * len(_suite_names(report)) + "---|",
    ]
    for score in report.get("versions", []):
        lines.append(_score_row(score, _suite_names(report)))
    lines.append("")
    if base is not None and serving is not None:
        lines.append(
            f"Base accuracy {100 * base['accuracy']:.1f}%; serving now {serving['version']} at "
            f"{100 * serving['accuracy']:.1f}% ({report['gain_points']:+.1f} points); "
            f"{report['examples_gained']} examples gained without a human label."
        )
        lines.append("")
    if chart:
        lines += [f"![accuracy per version]({chart})", ""]
    lines += [
        "## Cycles",
        "",
        "| cycle | labeled / tried | examples (total, +gained) | version | promoted | "
        "label s | dataset s | train s | evaluate s | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.get("cycles", []):
        t, lab = c["timings_s"], c["labeling"]
        total = c.get("examples_total", c["dataset"].get("train", 0))
        lines.append(
            f"| {c['cycle']} | {lab['labeled']} / {lab['attempted']} | {total} (+{c['examples_gained']}) | "
            f"{c['version'] or '-'} | {'yes' if c['promoted'] else 'no'} | {t.get('label', 0):.0f} | "
            f"{t.get('dataset', 0):.0f} | {t.get('train', 0):.0f} | {t.get('evaluate', 0):.0f} | "
            f"{'; '.join(c['gate']) or c.get('error') or c['status']} |"
        )
    lines += ["", "## Settings", "", "```json", _json(settings), "```", ""]
    return "\n".join(lines)


def _suite_names(report: Mapping[str, Any]) -> list[str]:
    names: set[str] = set()
    for score in report.get("versions", []):
        names.update(score["suites"])
    return sorted(names)


def _score_row(score: Mapping[str, Any], suites: Sequence[str]) -> str:
    cells = [f"{100 * score['suites'][s]:.0f}%" if s in score["suites"] else "-" for s in suites]
    valid = score.get("valid_call_rate")
    valid_text = "-" if valid is None else f"{100 * valid:.0f}%"
    return (
        f"| {score['version']} | {100 * score['accuracy']:.1f}% | " + " | ".join(cells) + f" | {valid_text} |"
    )


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True, default=str)


__all__ = ["CycleReport", "Improve", "ImproveReport", "Score", "markdown"]

"""The learning cycle: dataset -> LoRA training (separate process) -> evaluation of candidate and serving
version -> gate -> register and promote (hot swap) or reject. Plus the triggers that queue a job."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from agentloop.application.learning.gate import GateDecision, decide
from agentloop.application.learning.registry import ModelRegistry
from agentloop.domain.events import Event, TrainingCompleted, TrainingFailed, TrainingStarted
from agentloop.domain.learning import JobStatus, ModelVersion, TrainingJob
from agentloop.domain.model import utcnow
from agentloop.errors import AgentLoopError, ConflictError, StorageError, TrainingError

logger = logging.getLogger(__name__)

Progress = Callable[[Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class DatasetSummary:
    hash: str
    directory: Path
    train_file: Path
    validation_file: Path
    train_examples: int
    validation_examples: int
    counts: Mapping[str, int] = field(default_factory=dict)


def capped_steps(params: Mapping[str, Any], train_examples: int) -> dict[str, Any]:
    """With `max_epochs` set, `max_steps` is capped at that many passes over the training examples: a few
    self-labeled examples trained for a fixed step count are seen twenty times over, the loss goes to 0 and
    the model forgets what it could do before (a measured improve run: files 50% -> 0%)."""
    epochs = float(params.get("max_epochs") or 0)
    if epochs <= 0 or "max_steps" not in params or train_examples <= 0:
        return dict(params)
    batch = max(1, int(params.get("batch_size", 1)))
    cap = max(1, math.ceil(epochs * train_examples / batch))
    return {**params, "max_steps": min(int(params["max_steps"]), cap)}


@dataclass(frozen=True)
class TrainOutcome:
    status: str  # "completed" or "cancelled"
    adapter_path: Path | None
    adapter_sha256: str | None
    metrics: Mapping[str, Any] = field(default_factory=dict)


class DatasetSource(Protocol):
    async def build(self, out_root: Path) -> DatasetSummary: ...

    async def usable_examples_since(self, since: datetime | None) -> int: ...


class Trainer(Protocol):
    async def train(
        self,
        dataset: DatasetSummary,
        output_dir: Path,
        hyperparameters: Mapping[str, Any],
        on_progress: Progress,
    ) -> TrainOutcome: ...


class Evaluator(Protocol):
    async def evaluate(self, version: ModelVersion) -> Any: ...


class JobStore(Protocol):
    async def add_job(self, job: TrainingJob) -> None: ...

    async def get_job(self, job_id: str) -> TrainingJob: ...

    async def save_job(self, job: TrainingJob) -> None: ...

    async def active_job(self) -> TrainingJob | None: ...

    async def last_finished_job(self) -> TrainingJob | None: ...

    async def next_version_id(self) -> str: ...

    async def add_events(self, events: Sequence[Event]) -> None: ...


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...


@dataclass(frozen=True)
class LearningConfig:
    data_dir: Path
    base_sha256: str
    min_examples: int = 20
    min_interval_s: float = 3600.0
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    min_gain: float = 0.02
    max_regression: float = 0.05


class LearningService:
    def __init__(
        self,
        jobs: JobStore,
        datasets: DatasetSource,
        trainer: Trainer,
        evaluator: Evaluator,
        registry: ModelRegistry,
        config: LearningConfig,
        queue: JobQueue | None = None,
    ) -> None:
        self.jobs = jobs
        self.datasets = datasets
        self.trainer = trainer
        self.evaluator = evaluator
        self.registry = registry
        self.config = config
        self.queue = queue

    async def submit(self, params: Mapping[str, Any] | None = None, reason: str = "manual") -> TrainingJob:
        """Record a job and queue it; only one job may be queued or running at a time."""
        active = await self.jobs.active_job()
        if active is not None:
            raise ConflictError(f"training job {active.id} is already {active.status}")
        job = TrainingJob(params=dict(params or {}), reason=reason)
        await self.jobs.add_job(job)
        if self.queue is not None:
            try:
                self.queue.enqueue(job.id)
            except StorageError as exc:
                # A job that never reached the queue must not block the next one as "queued" forever.
                job.status, job.error, job.finished_at = JobStatus.FAILED, f"could not queue: {exc}", utcnow()
                await self.jobs.save_job(job)
                raise
        return job

    async def maybe_trigger(self) -> TrainingJob | None:
        """Queue a job when enough usable examples arrived since the last one and it is not too soon."""
        if await self.jobs.active_job() is not None:
            return None
        last = await self.jobs.last_finished_job()
        since = last.created_at if last else None
        if since and utcnow() - since < timedelta(seconds=self.config.min_interval_s):
            return None
        if await self.datasets.usable_examples_since(since) < self.config.min_examples:
            return None
        return await self.submit(reason="threshold")

    async def cancel(self, job_id: str) -> TrainingJob:
        job = await self.jobs.get_job(job_id)
        if job.status.finished:
            raise ConflictError(f"training job {job.id} is already {job.status}")
        job.status = JobStatus.CANCELLED
        job.finished_at = utcnow()
        await self.jobs.save_job(job)
        return job

    async def run(self, job_id: str, on_progress: Progress | None = None) -> TrainingJob:
        """Run a queued job to the end; failures mark the job failed and never register a version."""
        job = await self.jobs.get_job(job_id)
        if job.status != JobStatus.QUEUED:
            return job
        job.status, job.started_at = JobStatus.RUNNING, utcnow()
        await self.jobs.save_job(job)
        await self.jobs.add_events([TrainingStarted(job_id=job.id, reason=job.reason)])
        cycle = _Cycle(self, job, on_progress)
        try:
            await cycle.run()
        except asyncio.CancelledError:
            await cycle.finish(JobStatus.CANCELLED, "cancelled")
            raise
        except AgentLoopError as exc:
            await cycle.finish(JobStatus.FAILED, str(exc))
        except Exception as exc:  # a crash of any stage fails the job; serving goes on
            logger.exception("training job %s crashed", job.id)
            await cycle.finish(JobStatus.FAILED, f"{type(exc).__name__}: {exc}")
        return cycle.job


class _Cycle:
    def __init__(self, service: LearningService, job: TrainingJob, on_progress: Progress | None) -> None:
        self.service = service
        self.job = job
        self.on_progress = on_progress
        self.timings: dict[str, float] = {}

    async def run(self) -> None:
        dataset = await self._stage("dataset", self._dataset())
        outcome = await self._stage("train", self._train(dataset))
        if outcome.status == "cancelled" or outcome.adapter_path is None:
            await self.finish(JobStatus.CANCELLED, "cancelled")
            return
        candidate = await self._register(dataset, outcome)
        decision = await self._stage("evaluate", self._evaluate(candidate))
        await self._stage("gate", self._apply(candidate, decision))
        self.job.version_id = candidate.id
        self.job.progress = {
            **self.job.progress,
            "stage": "done",
            "timings_s": self.timings,
            "promoted": decision.promote,
            "gate": decision.reasons,
        }
        await self.finish(
            JobStatus.COMPLETED,
            None,
            TrainingCompleted(job_id=self.job.id, version_id=candidate.id, promoted=decision.promote),
        )

    async def _stage(self, name: str, work: Awaitable[Any]) -> Any:
        await self._report({"stage": name})
        started = asyncio.get_running_loop().time()
        try:
            return await work
        finally:
            self.timings[name] = round(asyncio.get_running_loop().time() - started, 2)

    async def _dataset(self) -> DatasetSummary:
        dataset = await self.service.datasets.build(self.service.config.data_dir / "datasets")
        wanted = int(self.job.params.get("min_examples", 1))
        if dataset.train_examples < wanted:
            raise TrainingError(
                f"not enough usable examples to train: {dataset.train_examples} (need {wanted}); "
                "rate or correct some answers first"
            )
        self.job.progress = {**self.job.progress, "dataset": dataset.hash, "examples": dataset.train_examples}
        return dataset

    @property
    def hyperparameters(self) -> dict[str, Any]:
        params = {**self.service.config.hyperparameters, **self.job.params}
        examples = self.job.progress.get("examples")
        return capped_steps(params, int(examples)) if examples else params

    async def _train(self, dataset: DatasetSummary) -> TrainOutcome:
        out = self.service.config.data_dir / "adapters" / self.job.id
        return await self.service.trainer.train(dataset, out, self.hyperparameters, self._training_progress)

    async def _training_progress(self, progress: Mapping[str, Any]) -> None:
        current = await self.service.jobs.get_job(self.job.id)
        if current.status == JobStatus.CANCELLED:
            raise asyncio.CancelledError  # the trainer stops its process on cancellation
        await self._report({"stage": "train", **progress})

    async def _register(self, dataset: DatasetSummary, outcome: TrainOutcome) -> ModelVersion:
        serving = await self.service.registry.serving()
        candidate = ModelVersion(
            id=await self.service.jobs.next_version_id(),
            base_sha256=self.service.config.base_sha256,
            parent_id=serving.id if serving else None,
            adapter_path=str(outcome.adapter_path),
            adapter_sha256=outcome.adapter_sha256,
            dataset_hash=dataset.hash,
            hyperparameters=self.hyperparameters,
            metrics={"training": dict(outcome.metrics), "dataset": dict(dataset.counts)},
        )
        await self.service.registry.register(candidate)
        return candidate

    async def _evaluate(self, candidate: ModelVersion) -> GateDecision:
        serving = await self.service.registry.serving()
        if serving is None:
            raise TrainingError("no serving version to compare the candidate with")
        serving_report = await self.service.evaluator.evaluate(serving)
        candidate_report = await self.service.evaluator.evaluate(candidate)
        config = self.service.config
        decision = decide(candidate_report, serving_report, config.min_gain, config.max_regression)
        candidate.metrics = {
            **candidate.metrics,
            "evaluation": candidate_report.to_dict(),
            "serving_evaluation": {"version": serving.id, **serving_report.to_dict()},
            "gate": {"promote": decision.promote, "reasons": decision.reasons},
        }
        return decision

    async def _apply(self, candidate: ModelVersion, decision: GateDecision) -> None:
        if decision.promote:
            # Metrics and promotion are stored in one transaction, after the swap succeeded.
            reason = f"gate (job {self.job.id})"
            await self.service.registry.promote(candidate.id, reason=reason, metrics=candidate.metrics)
        else:
            await self.service.registry.reject(candidate.id, candidate.metrics)

    async def _report(self, progress: Mapping[str, Any]) -> None:
        self.job.progress = {**self.job.progress, **progress}
        await self.service.jobs.save_job(self.job)
        if self.on_progress is not None:
            await self.on_progress(self.job.progress)

    async def finish(self, status: JobStatus, error: str | None, event: Event | None = None) -> None:
        self.job.status, self.job.error, self.job.finished_at = status, error, utcnow()
        await self.service.jobs.save_job(self.job)
        if event is None and status == JobStatus.FAILED:
            event = TrainingFailed(job_id=self.job.id, error=error or "failed")
        if event is not None:
            await self.service.jobs.add_events([event])

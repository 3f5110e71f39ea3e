"""Prometheus metrics, correct across processes.

`agentloop serve` runs the API and a training worker in separate processes. prometheus-client's multiprocess
mode lets every process write its samples to files in one directory (`PROMETHEUS_MULTIPROC_DIR`, set by
`prepare_multiprocess`, which serve calls before it starts anything); `/metrics` merges them. Without that
directory (tests, `agentloop ask`) each `Metrics` keeps its own in-memory registry.

State that lives in the database (training jobs by status, evaluation accuracy per version) is read at scrape
time instead, so it is right whichever process changed it and survives restarts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter as Tally
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from agentloop.application.ports import Completion, GenerationRequest, InferenceEngine, Token
from agentloop.domain.events import Event, ToolExecuted
from agentloop.domain.learning import ModelVersion, TrainingJob

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Turns on this hardware take seconds to minutes; HTTP reads take milliseconds.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
RATE_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 200)
TOOL_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30)


def prepare_multiprocess(directory: Path) -> Path:
    """Empty `directory` and make every metric this process and its children create write there."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus-client picks its value class once, at import: pick again now that the directory is set.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def process_exited(pid: int) -> None:
    """Drop a finished child's live gauges (its counters and histograms stay in the totals)."""
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric the server exports, and the few ways the rest of the code feeds them."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        # In multiprocess mode the samples live in files and the collector reads them; no registry holds them.
        self.registry: CollectorRegistry | None = None if directory else CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "agent_request_duration_seconds",
            "HTTP request duration by method, route template and status code.",
            ["method", "endpoint", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.tool_executions = Counter(
            "tool_executions_total",
            "Tool calls by tool and outcome (ok/error).",
            ["tool_name", "status"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "tool_execution_duration_seconds",
            "Tool call duration.",
            ["tool_name"],
            buckets=TOOL_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "agent_inference_duration_seconds",
            "Duration of one model call (prompt evaluation and generation).",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "agent_time_to_first_token_seconds",
            "Time from a model call's start to its first generated token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "agent_inference_tokens_per_second",
            "Generation speed of one model call, in tokens per second after the first token.",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter("agent_generated_tokens_total", "Tokens generated.", registry=r)
        self.prompt_tokens = Counter("agent_prompt_tokens_total", "Prompt tokens of model calls.", registry=r)
        self.cached_tokens = Counter(
            "agent_prompt_cached_tokens_total",
            "Prompt tokens found in the KV cache (not evaluated again).",
            registry=r,
        )
        self.active_conversations = Gauge(
            "agent_active_conversations",
            "Conversations with a turn running now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.events = Counter(
            "agent_events_processed_total", "Domain events recorded, by event name.", ["event"], registry=r
        )
        self._active: Tally[str] = Tally()

    # --- feeding ------------------------------------------------------------------------------------------

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).observe(seconds)

    def observe_completion(self, completion: Completion) -> None:
        """One model call finished: its duration, time to first token, speed and prompt-cache use."""
        self.inference_duration.observe(completion.duration_ms / 1000.0)
        self.generated_tokens.inc(completion.usage.completion_tokens)
        self.prompt_tokens.inc(completion.usage.prompt_tokens)
        self.cached_tokens.inc(int(completion.extra.get("cached_tokens", 0)))
        if completion.usage.completion_tokens > 0:
            self.time_to_first_token.observe(completion.ttft_ms / 1000.0)
            decoding_s = (completion.duration_ms - completion.ttft_ms) / 1000.0
            if completion.usage.completion_tokens > 1 and decoding_s > 0:
                self.tokens_per_second.observe((completion.usage.completion_tokens - 1) / decoding_s)

    def observe_events(self, events: Sequence[Event]) -> None:
        """Domain events once stored: counted by name; tool executions also by tool and outcome."""
        for event in events:
            self.events.labels(event.name).inc()
            if isinstance(event, ToolExecuted):
                self.tool_executions.labels(event.tool_name, "ok" if event.ok else "error").inc()
                self.tool_duration.labels(event.tool_name).observe(event.duration_ms / 1000.0)

    @contextlib.contextmanager
    def conversation_active(self, conversation_id: str) -> Iterator[None]:
        """Count the conversation as active while the block runs (nested turns count it once)."""
        self._active[conversation_id] += 1
        self.active_conversations.set(len(self._active))
        try:
            yield
        finally:
            self._active[conversation_id] -= 1
            if self._active[conversation_id] <= 0:
                del self._active[conversation_id]
            self.active_conversations.set(len(self._active))

    # --- exposition ---------------------------------------------------------------------------------------

    def exposition(self, state: Iterable[Metric] = ()) -> bytes:
        """The text format of every process's samples plus `state` (families read at scrape time)."""
        source: Any = self.registry
        if self.directory is not None:
            source = MultiProcessCollector(None, str(self.directory))  # type: ignore[no-untyped-call]
        families = list(source.collect())
        families.append(_cache_hit_ratio(families))
        return generate_latest(_Families([*families, *state]))


@cache
def _process_metrics(directory: Path) -> Metrics:
    return Metrics(directory)


def metrics_for_process() -> Metrics:
    """In multiprocess mode one `Metrics` per process (two would overwrite each other's sample files);
    otherwise a fresh one with its own registry."""
    directory = multiprocess_dir()
    return _process_metrics(directory) if directory else Metrics()


@dataclass
class _Families:
    families: list[Metric] = field(default_factory=list)

    def collect(self) -> list[Metric]:
        return self.families


def _total(families: Sequence[Metric], name: str) -> float:
    return sum(
        sample.value
        for family in families
        if family.name == name
        for sample in family.samples
        if sample.name == f"{name}_total"
    )


def _cache_hit_ratio(families: Sequence[Metric]) -> Metric:
    prompt = _total(families, "agent_prompt_tokens")
    cached = _total(families, "agent_prompt_cached_tokens")
    ratio = GaugeMetricFamily(
        "agent_prompt_cache_hit_ratio",
        "Share of prompt tokens served from the KV cache since the server started (0 before any call).",
    )
    ratio.add_metric([], cached / prompt if prompt else 0.0)
    return ratio


# --- state read at scrape time ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearningState:
    """What the database says about the learning loop, as /metrics reads it."""

    serving_version: str
    jobs_by_status: Mapping[str, int]
    versions: Sequence[ModelVersion]
    active_job: TrainingJob | None = None


JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


def state_families(state: LearningState) -> list[Metric]:
    serving = GaugeMetricFamily(
        "agent_model_version_info", "The model version serving requests.", labels=["version"]
    )
    serving.add_metric([state.serving_version], 1.0)
    jobs = GaugeMetricFamily("agent_training_jobs", "Training jobs by status.", labels=["status"])
    for status in (*JOB_STATUSES, *sorted(set(state.jobs_by_status) - set(JOB_STATUSES))):
        jobs.add_metric([status], float(state.jobs_by_status.get(status, 0)))
    return [serving, jobs, _accuracy(state.versions), *_progress(state.active_job)]


def evaluation_accuracy(versions: Sequence[ModelVersion]) -> dict[str, float]:
    """Held-out accuracy per version: its own evaluation, else the gate's run of it as the serving version."""
    found: dict[str, float] = {}
    for version in versions:
        serving = version.metrics.get("serving_evaluation")
        if isinstance(serving, Mapping) and isinstance(serving.get("accuracy"), int | float):
            found.setdefault(str(serving.get("version")), float(serving["accuracy"]))
    for version in versions:
        own = version.metrics.get("evaluation")
        if isinstance(own, Mapping) and isinstance(own.get("accuracy"), int | float):
            found[version.id] = float(own["accuracy"])
    return found


def _accuracy(versions: Sequence[ModelVersion]) -> Metric:
    family = GaugeMetricFamily(
        "agent_evaluation_accuracy",
        "Held-out evaluation accuracy per model version (0-1).",
        labels=["version"],
    )
    for version, accuracy in sorted(evaluation_accuracy(versions).items()):
        family.add_metric([version], accuracy)
    return family


def _progress(job: TrainingJob | None) -> list[Metric]:
    if job is None:
        return []
    families: list[Metric] = []
    for key, help_text in (
        ("step", "Optimizer step of the running training job."),
        ("max_steps", "Optimizer steps the running training job will take."),
        ("loss", "Latest training loss of the running job."),
        ("eta_s", "Estimated seconds left in the running job's training stage."),
    ):
        value = job.progress.get(key)
        if isinstance(value, int | float):
            family = GaugeMetricFamily(f"agent_training_{key}", help_text, labels=["job_id"])
            family.add_metric([job.id], float(value))
            families.append(family)
    return families


# --- the engine, observed -----------------------------------------------------------------------------------


class ObservedEngine:
    """An InferenceEngine that reports every finished model call to the metrics; everything else (hot swap,
    closing) goes to the engine it wraps."""

    def __init__(self, engine: InferenceEngine, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    @property
    def context_size(self) -> int:
        return self.engine.context_size

    async def count_tokens(self, text: str) -> int:
        return await self.engine.count_tokens(text)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Token | Completion, None]:
        async with aclosing(self.engine.stream(request)) as items:
            async for item in items:
                if isinstance(item, Completion):
                    self.metrics.observe_completion(item)
                yield item

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

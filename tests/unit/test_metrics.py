"""Metrics: what each feed records, the state read at scrape time, the merge across processes, correlation
ids and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from huey import MemoryHuey
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agentloop.adapters.metrics import (
    LearningState,
    Metrics,
    ObservedEngine,
    evaluation_accuracy,
    state_families,
)
from agentloop.adapters.queue import HueyQueue
from agentloop.application.ports import Completion, GenerationRequest, complete
from agentloop.domain.events import FeedbackGiven, ToolExecuted
from agentloop.domain.learning import JobStatus, ModelVersion, TrainingJob
from agentloop.domain.model import Usage
from agentloop.entrypoints.api.observability import request_id_from
from fakes import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "agentloop.json"


def samples(exposition: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, keyed by name and labels (parsed by prometheus-client's own parser)."""
    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(exposition: bytes, name: str, **labels: str) -> float:
    return samples(exposition).get((name, frozenset(labels.items())), 0.0)


def tool_event(name: str = "calculator", ok: bool = True) -> ToolExecuted:
    return ToolExecuted(conversation_id="c1", tool_name=name, ok=ok, duration_ms=12.0)


def test_events_count_by_name_and_tools_by_outcome() -> None:
    metrics = Metrics()
    feedback = FeedbackGiven(conversation_id="c1", message_id="m1", rating="up", corrected=False)
    metrics.observe_events([tool_event(), tool_event(ok=False), tool_event("python"), feedback])
    scrape = metrics.exposition()
    assert value(scrape, "tool_executions_total", tool_name="calculator", status="ok") == 1
    assert value(scrape, "tool_executions_total", tool_name="calculator", status="error") == 1
    assert value(scrape, "tool_executions_total", tool_name="python", status="ok") == 1
    assert value(scrape, "agent_events_processed_total", event="ToolExecuted") == 3
    assert value(scrape, "agent_events_processed_total", event="FeedbackGiven") == 1
    assert value(scrape, "tool_execution_duration_seconds_count", tool_name="calculator") == 2


def test_a_completion_feeds_duration_first_token_speed_and_cache() -> None:
    metrics = Metrics()
    completion = Completion(
        "84", Usage(100, 11), "stop", "base", duration_ms=1200.0, ttft_ms=200.0, extra={"cached_tokens": 75}
    )
    metrics.observe_completion(completion)
    scrape = metrics.exposition()
    assert value(scrape, "agent_inference_duration_seconds_sum") == pytest.approx(1.2)
    assert value(scrape, "agent_time_to_first_token_seconds_sum") == pytest.approx(0.2)
    # 10 tokens after the first, in the second after it.
    assert value(scrape, "agent_inference_tokens_per_second_sum") == pytest.approx(10.0)
    assert value(scrape, "agent_generated_tokens_total") == 11
    assert value(scrape, "agent_prompt_cache_hit_ratio") == pytest.approx(0.75)


def test_an_empty_completion_records_no_speed_and_the_ratio_starts_at_zero() -> None:
    metrics = Metrics()
    assert value(metrics.exposition(), "agent_prompt_cache_hit_ratio") == 0.0
    metrics.observe_completion(Completion("", Usage(10, 0), "stop", "base", duration_ms=50.0))
    scrape = metrics.exposition()
    assert value(scrape, "agent_inference_duration_seconds_count") == 1
    assert value(scrape, "agent_time_to_first_token_seconds_count") == 0
    assert value(scrape, "agent_inference_tokens_per_second_count") == 0


def test_active_conversations_count_each_conversation_once() -> None:
    metrics = Metrics()
    with metrics.conversation_active("a"), metrics.conversation_active("a"):
        with metrics.conversation_active("b"):
            assert value(metrics.exposition(), "agent_active_conversations") == 2
        assert value(metrics.exposition(), "agent_active_conversations") == 1
    assert value(metrics.exposition(), "agent_active_conversations") == 0


async def test_the_observed_engine_reports_completions_and_passes_the_rest_through() -> None:
    metrics = Metrics()
    fake = FakeEngine(["hello there"], model_version="v7")
    engine = ObservedEngine(fake, metrics)
    completion = await complete(engine, GenerationRequest(prompt="hi", max_tokens=8))
    assert completion.text == "hello there"
    assert (engine.model_version, engine.context_size, await engine.count_tokens("abcdefgh")) == (
        "v7",
        4096,
        2,
    )
    assert engine.requests == fake.requests  # anything else reaches the wrapped engine
    assert value(metrics.exposition(), "agent_inference_duration_seconds_count") == 1
    assert value(metrics.exposition(), "agent_generated_tokens_total") == completion.usage.completion_tokens


def version(version_id: str, status: str = "candidate", **metrics: Any) -> ModelVersion:
    return ModelVersion(id=version_id, base_sha256="abc", status=status, metrics=metrics)  # type: ignore[arg-type]


def test_evaluation_accuracy_takes_own_reports_then_the_gate_s_view_of_the_serving_version() -> None:
    versions = [
        version("v2", evaluation={"accuracy": 0.7}, serving_evaluation={"version": "v1", "accuracy": 0.55}),
        version("v1", evaluation={"accuracy": 0.6}, serving_evaluation={"version": "base", "accuracy": 0.4}),
        version("base", status="promoted"),
        version("v3", evaluation={"accuracy": "n/a"}),
    ]
    assert evaluation_accuracy(versions) == {"v2": 0.7, "v1": 0.6, "base": 0.4}


def test_state_families_name_the_serving_version_every_job_status_and_live_progress() -> None:
    job = TrainingJob(
        status=JobStatus.RUNNING, progress={"stage": "train", "step": 3, "max_steps": 10, "loss": 1.5}
    )
    state = LearningState(
        serving_version="v1",
        jobs_by_status={"running": 1, "failed": 2},
        versions=[version("v1", evaluation={"accuracy": 0.5})],
        active_job=job,
    )
    scrape = Metrics().exposition(state_families(state))
    assert value(scrape, "agent_model_version_info", version="v1") == 1
    assert value(scrape, "agent_training_jobs", status="failed") == 2
    assert ("agent_training_jobs", frozenset({("status", "completed")})) in samples(scrape)
    assert value(scrape, "agent_evaluation_accuracy", version="v1") == 0.5
    assert value(scrape, "agent_training_step", job_id=job.id) == 3
    assert value(scrape, "agent_training_loss", job_id=job.id) == 1.5
    assert ("agent_training_eta_s", frozenset({("job_id", job.id)})) not in samples(scrape)


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agentloop.adapters.metrics import metrics_for_process, prepare_multiprocess
    from agentloop.domain.events import ToolExecuted
    if sys.argv[2] == "prepare":
        prepare_multiprocess(Path(sys.argv[1]))
    metrics = metrics_for_process()
    assert metrics is metrics_for_process()
    event = ToolExecuted(conversation_id="c", tool_name="calculator", ok=True, duration_ms=1.0)
    metrics.observe_events([event, event])
    metrics.observe_request("GET", "/", 200, 0.01)
    """
)


def test_several_processes_add_up_in_one_scrape(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    # The first child sets the directory up itself (as `agentloop serve` does); the second inherits it from
    # the environment (as the worker does).
    subprocess.run([sys.executable, "-c", CHILD, str(directory), "prepare"], check=True, timeout=60)
    env = {**_env(), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", CHILD, str(directory), "inherit"], check=True, timeout=60, env=env)
    assert len(list(directory.glob("*.db"))) >= 2
    scrape = Metrics(directory).exposition()
    assert value(scrape, "tool_executions_total", tool_name="calculator", status="ok") == 4
    assert (
        value(scrape, "agent_request_duration_seconds_count", method="GET", endpoint="/", status="200") == 2
    )


def _env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}


# --- correlation ids ----------------------------------------------------------------------------------------

TOKEN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


@given(st.text(max_size=200))
def test_any_header_value_gives_a_plain_token_and_keeps_good_ones(header: str) -> None:
    request_id = request_id_from(header)
    assert TOKEN.fullmatch(request_id)
    if TOKEN.fullmatch(header):
        assert request_id == header
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)


def test_no_header_gives_a_fresh_id_each_time() -> None:
    assert request_id_from(None) != request_id_from(None)


def test_a_queued_job_runs_with_the_request_id_that_queued_it() -> None:
    seen: list[dict[str, Any]] = []
    queue = HueyQueue(
        MemoryHuey("test", immediate=True),
        lambda job_id: seen.append(dict(structlog.contextvars.get_contextvars())),
    )
    with structlog.contextvars.bound_contextvars(request_id="req-42"):
        queue.enqueue("job-1")
    queue.enqueue("job-2")
    assert seen == [{"request_id": "req-42", "job_id": "job-1"}, {"job_id": "job-2"}]


# --- deploy/ ------------------------------------------------------------------------------------------------


def exported_names() -> set[str]:
    """Every metric family name /metrics can export (state families with a running job included)."""
    job = TrainingJob(
        status=JobStatus.RUNNING, progress={"step": 1, "max_steps": 2, "loss": 1.0, "eta_s": 3.0}
    )
    state = LearningState("base", {}, [version("v1", evaluation={"accuracy": 0.5})], job)
    metrics = Metrics()
    metrics.observe_events([tool_event()])
    metrics.observe_request("GET", "/", 200, 0.1)
    scrape = metrics.exposition(state_families(state))
    return {name for name, _ in samples(scrape)}


def test_every_dashboard_query_uses_metrics_the_server_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    # Metric names, once the label lists of `by (...)` are taken out.
    bare = [re.sub(r"\bby \([^)]*\)", "", expr) for expr in exprs]
    used = {name for expr in bare for name in re.findall(r"\b(?:agent|tool)_[a-z_]+\b", expr)}
    assert used and used <= exported_names(), used - exported_names()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in (
        "latency",
        "tool",
        "inference",
        "first token",
        "cache",
        "active",
        "training",
        "version",
        "accuracy",
        "events",
    ):
        assert topic in titles, topic


def test_the_prometheus_config_scrapes_metrics() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"]

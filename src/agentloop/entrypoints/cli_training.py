"""`agentloop train`, `agentloop worker` and `agentloop eval`: the learning loop from the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from agentloop.application.learning.evaluation import EvalReport
from agentloop.domain.learning import JobStatus, TrainingJob
from agentloop.entrypoints.cli_render import echo_json, err, out

if TYPE_CHECKING:
    from agentloop.entrypoints.cli import Wiring

SuiteOption = Annotated[
    list[str] | None, typer.Option("--suite", help="Suite name (repeatable); default all.")
]
VersionOption = Annotated[str | None, typer.Option("--version", help="Model version; default: serving.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]


def register(app: typer.Typer) -> None:
    """Add `train`, `worker`, `eval` and `prepare` to the `agentloop` command."""
    app.command()(train)
    app.command()(worker)
    app.command("eval")(evaluate)
    app.command()(prepare)


def _wiring(ctx: typer.Context) -> Wiring:
    from agentloop.entrypoints.cli import wiring

    return wiring(ctx)


def job_json(job: TrainingJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": str(job.status),
        "reason": job.reason,
        "params": job.params,
        "progress": job.progress,
        "error": job.error,
        "version_id": job.version_id,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def train(
    ctx: typer.Context,
    wait: Annotated[bool, typer.Option("--wait", help="Run the job here and now, showing progress.")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Optimizer steps.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a new model version from rated and corrected conversations; without --wait the worker runs it."""
    params = {} if max_steps is None else {"max_steps": max_steps}
    job = asyncio.run(_train(ctx, params, wait, show_progress=not as_json))
    if as_json:
        echo_json(job_json(job))
    else:
        out().print(_job_summary(job))
    if job.status == JobStatus.FAILED:
        raise typer.Exit(1)


async def _train(ctx: typer.Context, params: dict[str, Any], wait: bool, show_progress: bool) -> TrainingJob:
    wired = _wiring(ctx)
    # Queuing needs only the database; running here needs the model too (it evaluates both versions).
    async with wired.container() if wait else wired.store_container() as container:
        learning = container.learning
        if wait:
            learning.queue = None  # run the job here instead of handing it to a worker
        job = await learning.submit(params)
        if not wait:
            return job
        if not show_progress:
            return await learning.run(job.id)
        with _progress_bar() as bar:
            task = bar.add_task("dataset", total=None)

            async def show(progress: Mapping[str, Any]) -> None:
                bar.update(
                    task,
                    description=_describe(progress),
                    total=progress.get("max_steps"),
                    completed=progress.get("step", 0),
                )

            return await learning.run(job.id, show)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=err(),
    )


def _describe(progress: Mapping[str, Any]) -> str:
    stage = str(progress.get("stage", ""))
    if stage == "train" and "loss" in progress:
        return f"train  loss {progress['loss']:.3f}  {progress.get('tokens_per_s', 0):.0f} tok/s"
    return stage


def _job_summary(job: TrainingJob) -> str:
    if job.status == JobStatus.QUEUED:
        return f"queued training job {job.id}; `agentloop worker` (or `agentloop serve`) runs it"
    if job.status == JobStatus.FAILED:
        return f"training job {job.id} failed: {job.error}"
    promoted = job.progress.get("promoted")
    verdict = "promoted and serving" if promoted else "rejected by the evaluation gate"
    gate = "; ".join(job.progress.get("gate", []))
    return f"training job {job.id} {job.status}: version {job.version_id} {verdict} ({gate})"


def worker(ctx: typer.Context) -> None:
    """Consume the training queue (SQLite in the data dir, or Redis with AGENTLOOP_REDIS_URL)."""
    from agentloop.adapters.logs import configure_logging
    from agentloop.adapters.queue import HueyQueue, make_huey
    from agentloop.bootstrap import run_job_in_worker

    settings = _wiring(ctx).settings
    configure_logging(settings.log_level, settings.log_json)
    err().print(f"agentloop worker consuming {'redis' if settings.redis_url else 'the SQLite queue'}")
    HueyQueue(make_huey(settings), lambda job_id: run_job_in_worker(settings, job_id)).consume()


def evaluate(
    ctx: typer.Context,
    suite: Annotated[
        list[str] | None, typer.Option("--suite", help="Suite name (repeatable); default all.")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Model version; default the serving one.")
    ] = None,
    split: Annotated[str, typer.Option(help="heldout or train.")] = "heldout",
    as_json: JsonFlag = False,
) -> None:
    """Score a model version on the bundled evaluation suites: accuracy, valid-call rate, latency."""
    report = asyncio.run(_evaluate(ctx, suite or [], version, split))
    if as_json:
        echo_json(report.to_dict())
        return
    console = out()
    for name, score in report.suites.items():
        valid = "  -  " if score.valid_call_rate is None else f"{score.valid_call_rate:6.1%}"
        console.print(
            f"{name:12} accuracy {score.accuracy:6.1%}  valid calls {valid}  "
            f"p50 {score.p50_latency_ms:7.0f} ms  (n={score.n})"
        )
    console.print(f"{'overall':12} accuracy {report.accuracy:6.1%}  version {report.version}")


async def _evaluate(ctx: typer.Context, suites: list[str], version_id: str | None, split: str) -> EvalReport:
    from agentloop.adapters.learning import EngineEvaluator

    async with _wiring(ctx).container() as container:
        evaluator = container.learning.evaluator
        assert isinstance(evaluator, EngineEvaluator)
        evaluator.suites = suites or None
        evaluator.split = split
        version = await (
            container.learning_store.get_version(version_id) if version_id else container.registry.serving()
        )
        if version is None:
            raise typer.BadParameter("no model version is registered")
        return await evaluator.evaluate(version)


def prepare(ctx: typer.Context) -> None:
    """Assemble the bundled model and de-quantize it once for training (cached by sha256; ~3 min first)."""
    from agentloop.adapters.model_files import ensure_model
    from agentloop.adapters.training.base_model import prepare_base

    settings = _wiring(ctx).settings
    model = ensure_model(settings.model_path, settings.cache_dir)
    out().print(f"model: {model.path} (sha256 {model.sha256[:16]})")
    base = prepare_base(model.path, model.sha256, settings.cache_dir)
    out().print(f"training base: {base}")

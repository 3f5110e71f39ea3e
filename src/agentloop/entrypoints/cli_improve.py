"""`agentloop improve`: self-training cycles from GroupThink consensus, with progress and a report; and the
GroupThink answer printing that `agentloop ask --groupthink` uses."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentloop.application.groupthink import GroupThinkAnswer
from agentloop.entrypoints.cli_render import echo_json, err, out
from agentloop.errors import AgentLoopError

if TYPE_CHECKING:
    from agentloop.entrypoints.cli import Wiring

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]


def register(app: typer.Typer) -> None:
    """Add `improve` to the `agentloop` command."""
    app.command()(improve)


def improve(
    ctx: typer.Context,
    cycles: Annotated[int, typer.Option("--cycles", min=1, max=10, help="Cycles to run.")] = 1,
    label: Annotated[
        int | None,
        typer.Option(
            "--label", min=1, help="Prompts labeled per cycle [default: AGENTLOOP_IMPROVE_LABEL_PER_CYCLE]."
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps", min=1, help="Optimizer steps per cycle [default: AGENTLOOP_IMPROVE_MAX_STEPS]."
        ),
    ] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Where the report goes [default: DATA_DIR/reports].")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Improve the model with no human labels: K cycles of GroupThink labeling, training, evaluation, gate."""
    from agentloop.entrypoints.cli import wiring

    report = asyncio.run(_improve(wiring(ctx), cycles, label, max_steps, report_dir))
    if as_json:
        echo_json(report)
        return
    base, serving = report.get("base"), report.get("serving")
    console = out()
    for score in report["versions"]:
        console.print(f"{score['version']:8} accuracy {100 * score['accuracy']:5.1f}%")
    if base and serving:
        console.print(
            f"serving {serving['version']}: {100 * serving['accuracy']:.1f}% vs base "
            f"{100 * base['accuracy']:.1f}% ({report['gain_points']:+.1f} points)"
        )
    for name, path in report["files"].items():
        console.print(f"{name}: {path}")


async def _improve(
    wired: Wiring, cycles: int, label: int | None, max_steps: int | None, report_dir: Path | None
) -> dict[str, Any]:
    from agentloop.adapters.learning import EngineEvaluator
    from agentloop.adapters.report import write_report
    from agentloop.application.learning.improve import Improve

    settings = wired.settings
    async with wired.container() as container:
        if container.labeler is None:
            raise AgentLoopError("GroupThink is not configured")
        container.learning.queue = None  # the cycles run here, not on a worker
        # Sized for the 30-minute budget on 2 cores: its own step count, learning rate and gate sample.
        evaluator = container.learning.evaluator
        if isinstance(evaluator, EngineEvaluator):
            evaluator.max_items = settings.improve_eval_items_per_suite
        training = {
            "max_steps": max_steps or settings.improve_max_steps,
            "learning_rate": settings.improve_learning_rate,
            "max_epochs": settings.improve_max_epochs,
        }
        gt = container.labeler.groupthink.config
        described = {
            "groupthink": {
                "samples": gt.samples,
                "temperature": gt.temperature,
                "threshold": gt.threshold,
                "min_support": gt.min_support,
                "max_tokens": gt.max_tokens,
                "failed_tool_weight": gt.failed_tool_weight,
                "personas": list(gt.personas),
            },
            "curriculum_prompts": len(container.labeler.curriculum),
            "demonstrations": {
                "bundled": len(container.labeler.demonstrations),
                "per_prompt": container.labeler.coaching_limit,
            },
            "training": {**container.learning.config.hyperparameters, **training},
            "evaluation": {
                "split": "heldout",
                "suites": settings.eval_suites or "all",
                "max_items_per_suite": settings.improve_eval_items_per_suite or "all",
            },
            "gate": {"min_gain": settings.gate_min_gain, "max_regression": settings.gate_max_regression},
            "threads": settings.threads,
        }
        runner = Improve(container.labeler, container.learning, container.learning_store, described)
        report = await runner.run(
            cycles, label or settings.improve_label_per_cycle, training, _progress_printer()
        )
    data = report.to_dict()
    files = write_report(data, report_dir or settings.resolved_data_dir / "reports")
    data["files"] = {name: str(path) for name, path in files.items()}
    return data


def _progress_printer() -> Any:
    last: dict[str, Any] = {}

    async def show(progress: Mapping[str, Any]) -> None:
        stage = progress.get("stage")
        key = (progress.get("cycle"), stage)
        step, total = progress.get("step"), progress.get("max_steps")
        # One line per stage, and a line every few steps of the long ones (label, train).
        if key == last.get("key") and not (step and (step == total or step % 5 == 0)):
            return
        if key == last.get("key") and step == last.get("step"):
            return
        last.update(key=key, step=step)
        where = f" {step}/{total}" if step and total else ""
        loss = f" loss {progress['loss']:.3f}" if stage == "train" and "loss" in progress else ""
        err().print(f"[dim]cycle {progress.get('cycle')}[/] {stage}{where}{loss}")

    return show


def groupthink_json(answer: GroupThinkAnswer) -> dict[str, Any]:
    consensus = answer.consensus
    return {
        "answer": answer.message.content,
        "conversation_id": answer.conversation_id,
        "message_id": answer.message.id,
        "model_version": answer.message.model_version,
        "steps": [
            {"name": call.name, "arguments": call.arguments, "result": result.output, "ok": result.ok}
            for call, result in consensus.winner.steps
        ],
        "groupthink": {**consensus.to_dict(), "labeled": answer.labeled, "samples": len(consensus.samples)},
    }


def print_groupthink(answer: GroupThinkAnswer) -> None:
    console = out()
    consensus = answer.consensus
    for call, result in consensus.winner.steps:
        mark = "ok" if result.ok else "failed"
        console.print(
            f"[dim]tool {call.name}({call.arguments}) -> {result.output!r} ({mark})[/]", markup=True
        )
    console.print(answer.message.content, markup=False)
    console.print(
        f"[dim]groupthink: agreement {consensus.agreement:.0%} of {len(consensus.samples)} samples"
        f"{', labeled for training' if answer.labeled else ''}[/]"
    )
    for vote in consensus.dissent:
        console.print(f"[dim]  dissent (samples {list(vote.samples)}): {vote.answer!r}[/]")

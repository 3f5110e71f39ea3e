"""`agentloop feedback` and `agentloop models`: rate answers and manage model versions from the shell.

They work on the database and never load the model. A promotion or rollback is recorded there; a running
server switches its engine when it next syncs with the database. Only an engine loaded in this process
(tests inject one) is switched at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentloop.adapters.storage.learning_repository import SqlLearningStore
from agentloop.application.learning.registry import ModelRegistry, adapter_host_of
from agentloop.bootstrap import Container
from agentloop.domain.events import FeedbackGiven, ModelUpdated
from agentloop.domain.learning import Feedback, ModelVersion, Rating, VersionStatus
from agentloop.entrypoints.cli_render import echo_json, err, one_line, out
from agentloop.errors import ValidationError

SYNC_NOTE = "recorded in the database; a running server switches to it when it next syncs"

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]

models_app = typer.Typer(no_args_is_help=True, help="Model versions: list, promote, roll back.")


def register(app: typer.Typer) -> None:
    """Add `feedback` and `models` to the `agentloop` command."""
    app.command()(feedback)
    app.add_typer(models_app, name="models")


@dataclass
class Learning:
    container: Container
    store: SqlLearningStore
    registry: ModelRegistry
    swaps_in_process: bool


@asynccontextmanager
async def learning(ctx: typer.Context) -> AsyncIterator[Learning]:
    # Imported here: cli imports this module to register its commands.
    from agentloop.entrypoints.cli import wiring

    async with wiring(ctx).store_container() as container:
        swaps = adapter_host_of(container.engine) is not None
        yield Learning(container, container.learning_store, container.registry, swaps)


# --- feedback -----------------------------------------------------------------------------------------------


def rating_of(up: bool, down: bool) -> Rating | None:
    if up and down:
        raise ValidationError("give --up or --down, not both", field="rating")
    return Rating.UP if up else Rating.DOWN if down else None


async def _feedback(
    ctx: typer.Context, message_id: str, rating: Rating | None, correction: str | None
) -> Feedback:
    async with learning(ctx) as parts:
        message = await parts.container.store.get_message(message_id)
        given = Feedback(message.id, message.conversation_id, rating=rating, correction=correction)
        event = FeedbackGiven(
            conversation_id=given.conversation_id,
            message_id=given.message_id,
            rating=None if rating is None else rating.value,
            corrected=correction is not None,
        )
        await parts.store.add_feedback(given, [event])
        return given


def feedback(
    ctx: typer.Context,
    message_id: Annotated[str, typer.Argument(metavar="MESSAGE_ID", help="The assistant message's id.")],
    up: Annotated[bool, typer.Option("--up", help="A good answer.")] = False,
    down: Annotated[bool, typer.Option("--down", help="A bad answer.")] = False,
    correction: Annotated[
        str | None, typer.Option("--correction", help="The answer it should have given.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Rate an answer (--up/--down) or correct it; corrections become training examples."""
    given = asyncio.run(_feedback(ctx, message_id, rating_of(up, down), correction))
    if as_json:
        echo_json(dataclasses.asdict(given))
        return
    what = [f"rated {given.rating.value}"] if given.rating else []
    what += ["corrected"] if given.correction is not None else []
    out().print(
        f"feedback {given.id} on message {given.message_id}: {', '.join(what)}", markup=False, soft_wrap=True
    )


# --- models -------------------------------------------------------------------------------------------------


def version_json(version: ModelVersion) -> dict[str, Any]:
    return {**dataclasses.asdict(version), "serving": version.status == VersionStatus.PROMOTED}


def versions_table(versions: Sequence[ModelVersion]) -> Table:
    table = Table(title="model versions")
    for column in ("", "id", "status", "parent", "created", "promoted", "metrics"):
        table.add_column(column, no_wrap=column != "metrics")
    for v in versions:
        serving = v.status == VersionStatus.PROMOTED
        table.add_row(
            Text("●", style="bold green") if serving else "",
            Text(v.id, style="bold" if serving else ""),
            v.status.value,
            v.parent_id or "-",
            _when(v.created_at),
            _when(v.promoted_at) if v.promoted_at else "-",
            one_line(json.dumps(v.metrics, ensure_ascii=False), 80) if v.metrics else "-",
        )
    return table


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


async def _list_versions(ctx: typer.Context) -> list[ModelVersion]:
    async with learning(ctx) as parts:
        return await parts.registry.list()


@models_app.command("ls")
def models_ls(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List model versions, newest first; ● marks the one serving."""
    versions = asyncio.run(_list_versions(ctx))
    if as_json:
        echo_json([version_json(v) for v in versions])
    elif versions:
        out().print(versions_table(versions))
    else:
        out().print("no model versions yet: the server records the base model when it first starts")


async def _switch(ctx: typer.Context, version_id: str | None) -> tuple[ModelUpdated, bool]:
    async with learning(ctx) as parts:
        registry = parts.registry
        event = await (registry.rollback() if version_id is None else registry.promote(version_id))
        return event, parts.swaps_in_process


def report_switch(event: ModelUpdated, swapped: bool, as_json: bool) -> None:
    if as_json:
        echo_json(
            {
                "serving": event.version_id,
                "previous": event.previous_version_id,
                "reason": event.reason,
                "swapped_in_process": swapped,
                "note": "switched in this process" if swapped else SYNC_NOTE,
            }
        )
        return
    was = f" (was {event.previous_version_id})" if event.previous_version_id else ""
    out().print(f"{event.version_id} is now the promoted version{was}", markup=False, soft_wrap=True)
    err().print(Text("switched in this process" if swapped else SYNC_NOTE, style="dim"), soft_wrap=True)


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version_id: Annotated[str, typer.Argument(metavar="ID", help="The version to serve.")],
    as_json: JsonFlag = False,
) -> None:
    """Serve this version from now on; the one serving so far is retired."""
    report_switch(*asyncio.run(_switch(ctx, version_id)), as_json)


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Undo the last promotion: serve again the version that served before."""
    report_switch(*asyncio.run(_switch(ctx, None)), as_json)

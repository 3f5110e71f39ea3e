"""What the CLI prints: streamed turns, tool-step lines, tables and JSON. No I/O besides writing output."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from agentloop.application.agent import TokenStreamed, ToolCalled, ToolReturned, TurnEvent, TurnFinished
from agentloop.domain.model import Conversation, Message, Role, ToolCall, ToolResult

# Tool arguments and results longer than this are cut in step lines; --json output always has them whole.
PREVIEW_CHARS = 160

ROLE_STYLES: dict[Role, str] = {
    Role.SYSTEM: "magenta",
    Role.USER: "bold cyan",
    Role.ASSISTANT: "bold green",
    Role.TOOL: "yellow",
}


def out() -> Console:
    # Built per call: the console must write to whatever sys.stdout is now (CliRunner swaps it).
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    err().print(Text(f"error: {message}", style="red"), soft_wrap=True)


def echo_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_json_default, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def mask_url(url: str) -> str:
    """The database URL with any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def one_line(text: str, limit: int = PREVIEW_CHARS) -> str:
    """Whitespace runs collapsed to one space, cut to `limit` characters: a preview, never the record."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def call_text(call: ToolCall) -> str:
    return f"{call.name}({one_line(json.dumps(call.arguments, ensure_ascii=False))})"


def step_line(call: ToolCall, result: ToolResult) -> Text:
    """`→ calculator({"expression": "2+2"}) = 4` on one dim line; a failed step shows its error in red."""
    line = Text(f"→ {call_text(call)} = ", style="dim")
    line.append(one_line(result.output), style="dim" if result.ok else "red")
    return line


def usage_line(finished: TurnFinished) -> Text:
    usage = finished.usage
    return Text(
        f"{finished.message.model_version} · {usage.prompt_tokens}+{usage.completion_tokens} tokens · "
        f"{finished.latency_ms:.0f} ms",
        style="dim",
    )


class TurnPrinter:
    """Writes a turn as it happens: answer tokens to stdout as they stream, one dim line per tool step."""

    def __init__(self) -> None:
        self.console = out()
        self.pending: ToolCall | None = None
        self.mid_line = False

    def handle(self, event: TurnEvent) -> None:
        if isinstance(event, TokenStreamed):
            self._write(event.text)
        elif isinstance(event, ToolCalled):
            self.pending = event.call
        elif isinstance(event, ToolReturned):
            self._end_line()
            call = self.pending or ToolCall(event.result.name, {})
            self.console.print(step_line(call, event.result), soft_wrap=True)
        elif isinstance(event, TurnFinished):
            self._end_line()
            err().print(usage_line(event))

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        self.mid_line = not text.endswith("\n")

    def _end_line(self) -> None:
        if self.mid_line:
            self._write("\n")


def turn_json(finished: TurnFinished, conversation_id: str) -> dict[str, Any]:
    message = finished.message
    return {
        "answer": message.content,
        "steps": [
            {"name": call.name, "arguments": call.arguments, "result": result.output, "ok": result.ok}
            for call, result in finished.steps
        ],
        "conversation_id": conversation_id,
        "message_id": message.id,
        "model_version": message.model_version,
        "usage": dataclasses.asdict(finished.usage),
        "latency_ms": round(finished.latency_ms, 1),
    }


def conversation_json(conversation: Conversation, with_messages: bool = True) -> dict[str, Any]:
    data = dataclasses.asdict(conversation)
    if not with_messages:
        data.pop("messages")
    return data


def conversations_table(items: Sequence[Conversation], total: int, offset: int) -> Table:
    table = Table(title=f"conversations {offset + 1}-{offset + len(items)} of {total}" if items else None)
    table.add_column("id", no_wrap=True)
    table.add_column("title")
    table.add_column("source")
    table.add_column("updated", no_wrap=True)
    for conversation in items:
        table.add_row(
            conversation.id, conversation.title or "-", conversation.source, _when(conversation.updated_at)
        )
    return table


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def print_conversation(console: Console, conversation: Conversation) -> None:
    console.print(
        Text(f"{conversation.title or '(untitled)'}", style="bold"),
        Text(
            f"{conversation.id} · {conversation.source} · updated {_when(conversation.updated_at)}",
            style="dim",
        ),
        sep="\n",
    )
    for message in conversation.messages:
        console.print(message_text(message), soft_wrap=True)


def message_text(message: Message) -> Text:
    """One stored message: role, then its text, tool call or tool result, then the model version if any."""
    line = Text(f"{message.role.value:>9} ", style=ROLE_STYLES.get(message.role, ""))
    if message.role == Role.TOOL and message.tool_call and message.tool_result:
        line.append_text(step_line(message.tool_call, message.tool_result))
    elif message.tool_call:
        line.append(f"→ {call_text(message.tool_call)}", style="dim")
    else:
        line.append(message.content)
    if message.model_version:
        line.append(f"  [{message.model_version}]", style="dim")
    return line


@dataclasses.dataclass(frozen=True)
class Check:
    """One `agentloop doctor` finding."""

    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def checks_table(checks: Sequence[Check]) -> Table:
    table = Table(title="agentloop doctor")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for check in checks:
        status = Text("ok", style="green") if check.ok else Text("fail", style="bold red")
        table.add_row(check.name, status, check.detail)
    return table

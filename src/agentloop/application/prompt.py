"""The one prompt format: serving, training and evaluation all render through `render_prompt`.

Gemma turns (`<start_of_turn>user|model ... <end_of_turn>`). Gemma has no system or tool role: the system text
and tool list open the first user turn, and tool results come back in a user turn wrapped in <tool_result>.
A model turn is either a tool call, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, or plain
answer text. See docs/adr/0001-prompt-format.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentloop.application.ports import OutputConstraint
from agentloop.application.tools import ToolSchema
from agentloop.domain.model import Message, Role, ToolCall

START = "<start_of_turn>"
END = "<end_of_turn>"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
STOP_SEQUENCES = (END, "<start_of_turn>", "<eos>")

ToolChoice = Literal["auto", "none", "required"] | str


def _turn(role: str, text: str) -> str:
    return f"{START}{role}\n{text}\n{END}\n"


def render_tool_call(call: ToolCall) -> str:
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"


def render_tool_result(name: str, output: str) -> str:
    return f'<tool_result name="{name}">\n{output}\n</tool_result>'


def _tool_line(tool: ToolSchema) -> str:
    params = json.dumps(tool.parameters.get("properties", {}), ensure_ascii=False, sort_keys=True)
    return f"- {tool.name}: {tool.description} Arguments: {params}"


def render_system(system: str, tools: Sequence[ToolSchema]) -> str:
    if not tools:
        return system
    lines = [
        system,
        "",
        f"You can call tools. To call one, reply with only {CALL_OPEN}"
        '{"name": TOOL, "arguments": {...}}' + f"{CALL_CLOSE}. Otherwise reply with the answer.",
        "Tools:",
        *(_tool_line(tool) for tool in tools),
    ]
    return "\n".join(lines)


# Questions no tool helps with, answered directly: without them a base model calls tools for everything.
DIRECT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Hi! Who are you?", "Hello! I am a helpful assistant. How can I help you today?"),
    ("What is the capital of France?", "The capital of France is Paris."),
)


def _examples(tools: Sequence[ToolSchema]) -> list[Message]:
    """Demonstration turns for the tools on offer: a base model follows patterns better than instructions."""
    if not tools:
        return []
    shots: list[Message] = []
    for question, answer in DIRECT_EXAMPLES:
        shots += [Message("", Role.USER, question), Message("", Role.ASSISTANT, answer)]
    for tool in tools:
        if tool.example is None:
            continue
        ex = tool.example
        call = ToolCall(tool.name, ex.arguments, id=f"example_{tool.name}")
        shots += [
            Message("", Role.USER, ex.question),
            Message("", Role.ASSISTANT, tool_call=call),
            Message("", Role.TOOL, ex.result, tool_call=call),
            Message("", Role.ASSISTANT, ex.answer),
        ]
    return shots


def _render_message(message: Message) -> tuple[str, str]:
    if message.role == Role.ASSISTANT:
        text = render_tool_call(message.tool_call) if message.tool_call else message.content
        return "model", text
    if message.role == Role.TOOL:
        name = (
            message.tool_result.name
            if message.tool_result
            else (message.tool_call.name if message.tool_call else "tool")
        )
        output = message.tool_result.output if message.tool_result else message.content
        return "user", render_tool_result(name, output)
    return "user", message.content


def render_prompt(
    system: str,
    tools: Sequence[ToolSchema],
    messages: Sequence[Message],
    *,
    with_examples: bool = True,
    open_model_turn: bool = True,
) -> str:
    """Render a conversation; with `open_model_turn` the text ends where the model's reply begins."""
    header = render_system(system, tools)
    convo = [m for m in messages if m.role != Role.SYSTEM]
    shots = _examples(tools) if with_examples else []
    parts: list[str] = []
    pending_user: str | None = header
    for message in [*shots, *convo]:
        role, text = _render_message(message)
        if role == "user" and pending_user is not None:
            text = f"{pending_user}\n\n{text}" if pending_user else text
            pending_user = None
        elif pending_user:
            parts.append(_turn("user", pending_user))
            pending_user = None
        parts.append(_turn(role, text))
    if pending_user:
        parts.append(_turn("user", pending_user))
    if open_model_turn:
        parts.append(f"{START}model\n")
    return "".join(parts)


def call_schema(tools: Sequence[ToolSchema]) -> dict[str, Any]:
    """JSON Schema of one call to any of `tools`: the grammar's source, so every decoded call parses."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def decision_constraint(tools: Sequence[ToolSchema], choice: ToolChoice = "auto") -> OutputConstraint | None:
    """Constrain the next model turn: `auto` = a call or text, `required` = a call, a name = that tool,
    `none` = text that does not start like a call (a model shown tool examples would imitate one)."""
    if not tools:
        return None
    if choice == "none":
        return OutputConstraint(call_schema(tools), CALL_OPEN, CALL_CLOSE, allow_text=True, allow_call=False)
    if choice not in ("auto", "required"):
        tools = [tool for tool in tools if tool.name == choice]
        if not tools:
            return None
    return OutputConstraint(
        call_schema=call_schema(tools),
        call_prefix=CALL_OPEN,
        call_suffix=CALL_CLOSE,
        allow_text=choice == "auto",
    )


@dataclass(frozen=True)
class ParsedCall:
    call: ToolCall | None
    error: str | None = None


def parse_reply(text: str) -> ParsedCall | str:
    """A reply is a tool call (possibly malformed: `error` says why) or the answer text."""
    stripped = text.strip()
    if not stripped.startswith(CALL_OPEN):
        return stripped
    body = stripped[len(CALL_OPEN) :]
    if CALL_CLOSE in body:
        body = body[: body.index(CALL_CLOSE)]
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        return ParsedCall(None, f"tool call is not valid JSON: {exc.msg}")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return ParsedCall(None, "tool call must be an object with a string 'name'")
    arguments = data.get("arguments", {})
    if not isinstance(arguments, dict):
        return ParsedCall(None, "tool call 'arguments' must be an object")
    return ParsedCall(ToolCall(data["name"], arguments))


def could_become_call(text: str) -> bool:
    """True while streamed text may still turn out to be a tool call, so it must not be shown yet."""
    stripped = text.lstrip()
    return CALL_OPEN.startswith(stripped) or stripped.startswith(CALL_OPEN)

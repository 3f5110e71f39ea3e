"""Tool registry: schemas the model sees, argument validation, timeouts, and errors as observations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from agentloop.domain.model import ToolCall, ToolResult
from agentloop.errors import ToolError, ValidationError

MAX_OUTPUT_CHARS = 4000


@dataclass(frozen=True)
class ToolExample:
    """One demonstration shown to the model: a question, the call it should make, the result, the answer."""

    question: str
    arguments: dict[str, Any]
    result: str
    answer: str


@dataclass(frozen=True)
class ToolSchema:
    name: str
    description: str
    parameters: dict[str, Any]
    example: ToolExample | None = None


@dataclass(frozen=True)
class ToolContext:
    conversation_id: str
    workspace: Path


Handler = Callable[[dict[str, Any], ToolContext], Awaitable[str]]


@dataclass(frozen=True)
class Tool(ToolSchema):
    handler: Handler | None = field(default=None, compare=False)
    timeout_s: float = 10.0


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ValidationError(f"unknown tool {name!r}", field="tools") from None

    def select(self, names: Iterable[str]) -> list[Tool]:
        return [self.get(name) for name in names]

    async def execute(self, call: ToolCall, context: ToolContext) -> ToolResult:
        """Run a call; every failure becomes a ToolResult with ok=False, never an exception."""
        started = time.perf_counter()
        try:
            output = await self._run(call, context)
        except (ToolError, ValidationError) as exc:
            return _failure(call, str(exc), started)
        except TimeoutError:
            return _failure(call, f"tool {call.name!r} timed out", started)
        except Exception as exc:  # a tool bug must not crash the turn; the model sees the error
            return _failure(call, f"tool {call.name!r} failed: {type(exc).__name__}: {exc}", started)
        return ToolResult(call.id, call.name, _truncate(output), ok=True, duration_ms=_ms_since(started))

    async def _run(self, call: ToolCall, context: ToolContext) -> str:
        tool = self.get(call.name)
        errors = sorted(jsonschema.Draft202012Validator(tool.parameters).iter_errors(call.arguments), key=str)
        if errors:
            raise ValidationError(f"invalid arguments for {call.name!r}: {errors[0].message}")
        if tool.handler is None:
            raise ToolError(f"tool {call.name!r} has no server-side handler")
        return await asyncio.wait_for(tool.handler(call.arguments, context), timeout=tool.timeout_s)


def _failure(call: ToolCall, error: str, started: float) -> ToolResult:
    return ToolResult(
        call.id, call.name, f"error: {error}", ok=False, error=error, duration_ms=_ms_since(started)
    )


def _truncate(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n[... {len(text) - MAX_OUTPUT_CHARS} more characters]"


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

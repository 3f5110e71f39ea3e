"""Agents, conversations and the steps of a turn. Plain dataclasses: no framework imports here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from agentloop.errors import ValidationError


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ModelConfig:
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    adapter: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValidationError("temperature must be between 0 and 2", field="temperature")
        if self.max_tokens <= 0:
            raise ValidationError("max_tokens must be greater than 0", field="max_tokens")
        if not 0.0 < self.top_p <= 1.0:
            raise ValidationError("top_p must be in (0, 1]", field="top_p")


DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Use a tool whenever it gives a more reliable answer than memory, "
    "for example the calculator for any arithmetic. Answer briefly."
)


@dataclass
class Agent:
    name: str
    model_config: ModelConfig = field(default_factory=ModelConfig)
    allowed_tools: tuple[str, ...] = ()
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_steps: int = 5
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValidationError("agent name must not be empty", field="name")
        if self.max_steps < 1:
            raise ValidationError("max_steps must be at least 1", field="max_steps")

    def can_use_tool(self, tool_name: str) -> bool:
        return tool_name in self.allowed_tools


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + new_id()[:24])


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    output: str
    ok: bool = True
    error: str | None = None
    duration_ms: float = 0.0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass
class Message:
    conversation_id: str
    role: Role
    content: str = ""
    tool_call: ToolCall | None = None
    tool_result: ToolResult | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: float | None = None
    model_version: str | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class Conversation:
    agent_id: str
    title: str = ""
    messages: list[Message] = field(default_factory=list)
    source: str = "api"
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    owner_id: str | None = None

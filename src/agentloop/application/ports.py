"""The ports the use cases need. Each has a real adapter and a test fake."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agentloop.domain.events import Event
from agentloop.domain.model import Agent, Conversation, Message, Usage


@dataclass(frozen=True)
class OutputConstraint:
    """Decode the reply as `call_prefix + <JSON matching call_schema> + call_suffix`, or (if allow_text) as
    free text that does not start with call_prefix; `allow_call=False` leaves only the text. The engine turns
    this into a grammar."""

    call_schema: dict[str, Any]
    call_prefix: str
    call_suffix: str
    allow_text: bool = True
    allow_call: bool = True


@dataclass(frozen=True)
class ChatPrompt:
    """The rendered prompt's parts, for backends that take chat messages and native tool definitions (Ollama's
    /api/chat) rather than text. `tools` are `{"name", "description", "parameters"}` function specs."""

    system: str
    tools: tuple[dict[str, Any], ...] = ()
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    constraint: OutputConstraint | None = None
    chat: ChatPrompt | None = None


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    finish_reason: str
    model_version: str
    duration_ms: float = 0.0
    ttft_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class InferenceEngine(Protocol):
    """Generates text for a prompt. `stream` yields Token items and ends with exactly one Completion."""

    @property
    def model_version(self) -> str: ...

    @property
    def context_size(self) -> int: ...

    async def count_tokens(self, text: str) -> int: ...

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Token | Completion, None]: ...


class ConversationStore(Protocol):
    async def get_agent(self, agent_id: str) -> Agent: ...

    async def get_conversation(self, conversation_id: str) -> Conversation: ...

    async def create_conversation(self, conversation: Conversation) -> None: ...

    async def append(
        self, conversation_id: str, messages: Sequence[Message], events: Sequence[Event] = ()
    ) -> None: ...


async def complete(engine: InferenceEngine, request: GenerationRequest) -> Completion:
    async for item in engine.stream(request):
        if isinstance(item, Completion):
            return item
    raise RuntimeError("engine stream ended without a Completion")


class AdapterHost(Protocol):
    """An engine that serves one model version (the base GGUF plus an optional LoRA adapter) and can switch
    versions live: requests in flight finish on the old version, new ones use the new one."""

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None: ...

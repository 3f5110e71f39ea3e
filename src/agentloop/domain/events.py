"""Domain events, named in the past tense. Stored in the events table as they happen."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentloop.domain.model import new_id, utcnow


@dataclass(frozen=True, kw_only=True)
class Event:
    id: str = field(default_factory=new_id)
    occurred_at: datetime = field(default_factory=utcnow)

    @property
    def name(self) -> str:
        return type(self).__name__

    def payload(self) -> dict[str, Any]:
        """The fields besides id and occurred_at. They are plain values (strings, numbers, booleans, None),
        so a shallow copy is the whole copy (`dataclasses.asdict` would deep-copy each one, slowly)."""
        return {name: getattr(self, name) for name in _payload_fields(type(self))}


_PAYLOAD_FIELDS: dict[type[Event], tuple[str, ...]] = {}


def _payload_fields(kind: type[Event]) -> tuple[str, ...]:
    names = _PAYLOAD_FIELDS.get(kind)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(kind) if f.name not in ("id", "occurred_at"))
        _PAYLOAD_FIELDS[kind] = names
    return names


@dataclass(frozen=True, kw_only=True)
class ToolExecuted(Event):
    conversation_id: str
    tool_name: str
    ok: bool
    duration_ms: float
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResponseGenerated(Event):
    conversation_id: str
    message_id: str
    model_version: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    steps: int


@dataclass(frozen=True, kw_only=True)
class ConversationSaved(Event):
    conversation_id: str
    message_count: int


@dataclass(frozen=True, kw_only=True)
class FeedbackGiven(Event):
    conversation_id: str
    message_id: str
    rating: str | None
    corrected: bool


@dataclass(frozen=True, kw_only=True)
class TrainingStarted(Event):
    job_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class TrainingCompleted(Event):
    job_id: str
    version_id: str
    promoted: bool


@dataclass(frozen=True, kw_only=True)
class TrainingFailed(Event):
    job_id: str
    error: str


@dataclass(frozen=True, kw_only=True)
class ModelUpdated(Event):
    version_id: str
    previous_version_id: str | None
    reason: str


@dataclass(frozen=True, kw_only=True)
class ConsensusReached(Event):
    """A GroupThink vote; `labeled` turns (conversation_id/message_id set) become training examples."""

    conversation_id: str | None
    message_id: str | None
    prompt: str
    agreement: float
    samples: int
    labeled: bool
    model_version: str

"""The learning loop's domain: feedback, model versions and their life cycle, training jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from agentloop.domain.model import ToolCall, new_id, utcnow
from agentloop.errors import ValidationError

BASE_VERSION = "base"


class Rating(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass
class Feedback:
    """A user's judgement of one assistant message; a correction is a gold label for training."""

    message_id: str
    conversation_id: str
    rating: Rating | None = None
    correction: str | None = None
    correction_call: ToolCall | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if self.rating is None and self.correction is None and self.correction_call is None:
            raise ValidationError("feedback needs a rating or a correction", field="rating")


@dataclass(frozen=True)
class QualitySignals:
    """What is known about how good one turn was."""

    rating: Rating | None = None
    corrected: bool = False
    tools_ok: bool | None = None
    schema_valid: bool | None = None
    groupthink_agreement: float | None = None

    @property
    def usable(self) -> bool:
        if self.corrected:
            return True
        if self.rating == Rating.DOWN or self.tools_ok is False or self.schema_valid is False:
            return False
        return self.rating == Rating.UP or (self.groupthink_agreement or 0.0) > 0.0


class VersionStatus(StrEnum):
    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    RETIRED = "retired"


# A rejected version can still be promoted by hand (an operator overrides the gate); retired ones come back
# on rollback.
TRANSITIONS: dict[VersionStatus, frozenset[VersionStatus]] = {
    VersionStatus.CANDIDATE: frozenset({VersionStatus.PROMOTED, VersionStatus.REJECTED}),
    VersionStatus.PROMOTED: frozenset({VersionStatus.RETIRED}),
    VersionStatus.RETIRED: frozenset({VersionStatus.PROMOTED}),
    VersionStatus.REJECTED: frozenset({VersionStatus.PROMOTED}),
}


@dataclass
class ModelVersion:
    id: str
    base_sha256: str
    parent_id: str | None = None
    adapter_path: str | None = None
    adapter_sha256: str | None = None
    dataset_hash: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: VersionStatus = VersionStatus.CANDIDATE
    created_at: datetime = field(default_factory=utcnow)
    promoted_at: datetime | None = None

    @property
    def is_base(self) -> bool:
        return self.adapter_path is None

    def transition(self, to: VersionStatus) -> None:
        if to not in TRANSITIONS[self.status]:
            raise ValidationError(f"version {self.id} cannot go from {self.status} to {to}", field="status")
        self.status = to
        if to == VersionStatus.PROMOTED:
            self.promoted_at = utcnow()


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class TrainingJob:
    params: dict[str, Any] = field(default_factory=dict)
    status: JobStatus = JobStatus.QUEUED
    reason: str = "manual"
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    version_id: str | None = None
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

"""SqlLearningStore: feedback, model versions, training jobs and datasets on SQLAlchemy async sessions."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from agentloop.adapters.storage.orm import (
    ConversationRow,
    DatasetRow,
    FeedbackRow,
    MessageRow,
    ModelVersionRow,
    TrainingJobRow,
)

# The conversation, message and event mappings are SqlStore's; both stores read and write the same tables.
from agentloop.adapters.storage.repository import SessionStore, _conversation, _message, insert_events
from agentloop.domain.events import Event
from agentloop.domain.learning import (
    Feedback,
    JobStatus,
    ModelVersion,
    Rating,
    TrainingJob,
    VersionStatus,
)
from agentloop.domain.model import Conversation, Role, ToolCall, utcnow
from agentloop.errors import NotFoundError, ValidationError

VERSION_ID = re.compile(r"v(\d+)")
ACTIVE_JOB = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
FINISHED_JOB = tuple(status.value for status in JobStatus if status.finished)


@dataclass(frozen=True)
class StoredDataset:
    """A built training set, addressed by the hash of its content."""

    hash: str
    path: str
    counts: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)


class SqlLearningStore(SessionStore):
    """The learning loop's records in SQLite or PostgreSQL."""

    # --- feedback -------------------------------------------------------------------------------------------

    async def add_feedback(self, feedback: Feedback, events: Sequence[Event] = ()) -> None:
        """Store feedback (and events) on an assistant message; NotFoundError for an unknown message."""
        async with self._session() as session:
            message = await session.get(MessageRow, feedback.message_id)
            if message is None:
                raise NotFoundError("message", feedback.message_id)
            if message.role != Role.ASSISTANT.value:
                raise ValidationError(
                    f"message {message.id} is a {message.role} message; feedback is for assistant messages",
                    field="message_id",
                )
            if message.conversation_id != feedback.conversation_id:
                raise ValidationError(
                    f"message {message.id} belongs to conversation {message.conversation_id}",
                    field="conversation_id",
                )
            session.add(_feedback_row(feedback))
            await insert_events(session, events)
            await session.commit()
        self.on_events(events)

    async def list_feedback(
        self, conversation_id: str | None = None, since: datetime | None = None
    ) -> list[Feedback]:
        """Feedback, oldest first, optionally of one conversation and given at or after `since`."""
        query = select(FeedbackRow).where(_since(since)).order_by(FeedbackRow.created_at, FeedbackRow.id)
        if conversation_id is not None:
            query = query.where(FeedbackRow.conversation_id == conversation_id)
        async with self._session() as session:
            return [_feedback(row) for row in await session.scalars(query)]

    async def count_feedback_since(self, since: datetime | None) -> int:
        """How much feedback was given at or after `since` (all of it for None)."""
        async with self._session() as session:
            return await session.scalar(select(func.count(FeedbackRow.id)).where(_since(since))) or 0

    async def conversations_with_feedback(
        self, since: datetime | None, limit: int
    ) -> list[tuple[Conversation, list[Feedback]]]:
        """Conversations (with their messages) that got feedback at or after `since`, with that feedback
        oldest first; the `limit` conversations whose latest feedback is newest come first."""
        last = func.max(FeedbackRow.created_at).label("last")
        newest = (
            select(FeedbackRow.conversation_id, last)
            .where(_since(since))
            .group_by(FeedbackRow.conversation_id)
            .order_by(last.desc(), FeedbackRow.conversation_id)
            .limit(max(limit, 0))
        )
        async with self._session() as session:
            ids = list(await session.scalars(newest))
            conversations = await session.scalars(
                select(ConversationRow)
                .where(ConversationRow.id.in_(ids))
                .options(selectinload(ConversationRow.messages))
            )
            by_id = {row.id: _conversation(row, [_message(m) for m in row.messages]) for row in conversations}
            feedback = await session.scalars(
                select(FeedbackRow)
                .where(_since(since), FeedbackRow.conversation_id.in_(ids))
                .order_by(FeedbackRow.created_at, FeedbackRow.id)
            )
            grouped: dict[str, list[Feedback]] = {i: [] for i in ids}
            for row in feedback:
                grouped[row.conversation_id].append(_feedback(row))
        return [(by_id[i], grouped[i]) for i in ids if i in by_id]

    # --- model versions -------------------------------------------------------------------------------------

    async def add_version(self, version: ModelVersion) -> None:
        """Insert a version; ValidationError if its id is taken."""
        async with self._session() as session:
            session.add(_version_row(version))
            try:
                await session.commit()
            except IntegrityError as exc:
                raise ValidationError(f"model version {version.id} already exists", field="id") from exc

    async def get_version(self, version_id: str) -> ModelVersion:
        """The version with this id; NotFoundError if there is none."""
        async with self._session() as session:
            row = await session.get(ModelVersionRow, version_id)
            if row is None:
                raise NotFoundError("model version", version_id)
            return _version(row)

    async def list_versions(self) -> list[ModelVersion]:
        """Every version, newest first."""
        query = select(ModelVersionRow).order_by(ModelVersionRow.created_at.desc(), ModelVersionRow.id.desc())
        async with self._session() as session:
            return [_version(row) for row in await session.scalars(query)]

    async def save_version(self, version: ModelVersion) -> None:
        """Write a version's status, metrics and promoted_at; NotFoundError if it is not stored."""
        await self.save_versions([version])

    async def save_versions(self, versions: Sequence[ModelVersion], events: Sequence[Event] = ()) -> None:
        """Write several versions' status, metrics and promoted_at, and record events, in one transaction."""
        async with self._session() as session:
            for version in versions:
                values = {
                    "status": version.status.value,
                    "metrics": dict(version.metrics),
                    "promoted_at": version.promoted_at,
                }
                await _update(session, ModelVersionRow, version.id, values, "model version")
            await insert_events(session, events)
            await session.commit()
        self.on_events(events)

    async def serving_version(self) -> ModelVersion | None:
        """The promoted version, or None before any version exists."""
        query = (
            select(ModelVersionRow)
            .where(ModelVersionRow.status == VersionStatus.PROMOTED.value)
            .order_by(ModelVersionRow.promoted_at.desc())
            .limit(1)
        )
        async with self._session() as session:
            row = await session.scalar(query)
            return None if row is None else _version(row)

    async def next_version_id(self) -> str:
        """The next free id of the series v1, v2, ..."""
        async with self._session() as session:
            ids = await session.scalars(select(ModelVersionRow.id).where(ModelVersionRow.id.like("v%")))
            numbers = [int(m.group(1)) for i in ids if (m := VERSION_ID.fullmatch(i))]
        return f"v{max(numbers, default=0) + 1}"

    # --- training jobs --------------------------------------------------------------------------------------

    async def add_job(self, job: TrainingJob) -> None:
        """Insert a training job."""
        async with self._session() as session:
            session.add(TrainingJobRow(**_job_values(job)))
            await session.commit()

    async def get_job(self, job_id: str) -> TrainingJob:
        """The job with this id; NotFoundError if there is none."""
        async with self._session() as session:
            row = await session.get(TrainingJobRow, job_id)
            if row is None:
                raise NotFoundError("training job", job_id)
            return _job(row)

    async def save_job(self, job: TrainingJob) -> None:
        """Write every field of a stored job; NotFoundError if it is not stored."""
        async with self._session() as session:
            await _update(session, TrainingJobRow, job.id, _job_values(job), "training job")
            await session.commit()

    async def list_jobs(self, limit: int = 20) -> list[TrainingJob]:
        """The latest jobs, newest first."""
        query = (
            select(TrainingJobRow)
            .order_by(TrainingJobRow.created_at.desc(), TrainingJobRow.id.desc())
            .limit(max(limit, 0))
        )
        async with self._session() as session:
            return [_job(row) for row in await session.scalars(query)]

    async def count_jobs_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (statuses with none are left out)."""
        query = select(TrainingJobRow.status, func.count()).group_by(TrainingJobRow.status)
        async with self._session() as session:
            return {str(status): int(count) for status, count in (await session.execute(query)).all()}

    async def active_job(self) -> TrainingJob | None:
        """The oldest job that is queued or running, or None."""
        query = (
            select(TrainingJobRow)
            .where(TrainingJobRow.status.in_(ACTIVE_JOB))
            .order_by(TrainingJobRow.created_at, TrainingJobRow.id)
            .limit(1)
        )
        async with self._session() as session:
            row = await session.scalar(query)
            return None if row is None else _job(row)

    async def last_finished_job(self) -> TrainingJob | None:
        """The job that finished (completed, failed or was cancelled) last, or None."""
        finished = func.coalesce(TrainingJobRow.finished_at, TrainingJobRow.created_at)
        query = (
            select(TrainingJobRow)
            .where(TrainingJobRow.status.in_(FINISHED_JOB))
            .order_by(finished.desc(), TrainingJobRow.id.desc())
            .limit(1)
        )
        async with self._session() as session:
            row = await session.scalar(query)
            return None if row is None else _job(row)

    async def add_events(self, events: Sequence[Event]) -> None:
        """Record events (training started, completed, failed) that belong to no conversation."""
        await self._event_writes.submit(events)
        self.on_events(events)

    # --- datasets -------------------------------------------------------------------------------------------

    async def add_dataset(self, dataset: StoredDataset) -> None:
        """Record a built dataset; one with the same hash already stored is the same data, so it is kept."""
        async with self._session() as session:
            if await session.get(DatasetRow, dataset.hash) is not None:
                return
            session.add(_dataset_row(dataset))
            try:
                await session.commit()
            except IntegrityError:
                # Recorded by a concurrent build of the same data in the meantime.
                await session.rollback()

    async def get_dataset(self, dataset_hash: str) -> StoredDataset:
        """The dataset with this hash; NotFoundError if there is none."""
        async with self._session() as session:
            row = await session.get(DatasetRow, dataset_hash)
            if row is None:
                raise NotFoundError("dataset", dataset_hash)
            return _dataset(row)


async def _update(
    session: AsyncSession,
    table: type[ModelVersionRow] | type[TrainingJobRow],
    ident: str,
    values: dict[str, Any],
    kind: str,
) -> None:
    updated = await session.scalar(
        update(table)
        .where(table.id == ident)
        .values(values)
        .returning(table.id)
        .execution_options(synchronize_session=False)
    )
    if updated is None:
        raise NotFoundError(kind, ident)


def _since(since: datetime | None) -> ColumnElement[bool]:
    return true() if since is None else FeedbackRow.created_at >= since


def _feedback_row(feedback: Feedback) -> FeedbackRow:
    call = feedback.correction_call
    return FeedbackRow(
        id=feedback.id,
        message_id=feedback.message_id,
        conversation_id=feedback.conversation_id,
        rating=None if feedback.rating is None else feedback.rating.value,
        correction=feedback.correction,
        correction_call=None if call is None else dataclasses.asdict(call),
        created_at=feedback.created_at,
    )


def _feedback(row: FeedbackRow) -> Feedback:
    return Feedback(
        id=row.id,
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        rating=None if row.rating is None else Rating(row.rating),
        correction=row.correction,
        correction_call=None if row.correction_call is None else ToolCall(**row.correction_call),
        created_at=row.created_at,
    )


def _version_row(version: ModelVersion) -> ModelVersionRow:
    return ModelVersionRow(
        id=version.id,
        parent_id=version.parent_id,
        base_sha256=version.base_sha256,
        adapter_path=version.adapter_path,
        adapter_sha256=version.adapter_sha256,
        dataset_hash=version.dataset_hash,
        hyperparameters=dict(version.hyperparameters),
        metrics=dict(version.metrics),
        status=version.status.value,
        created_at=version.created_at,
        promoted_at=version.promoted_at,
    )


def _version(row: ModelVersionRow) -> ModelVersion:
    return ModelVersion(
        id=row.id,
        parent_id=row.parent_id,
        base_sha256=row.base_sha256,
        adapter_path=row.adapter_path,
        adapter_sha256=row.adapter_sha256,
        dataset_hash=row.dataset_hash,
        hyperparameters=row.hyperparameters,
        metrics=row.metrics,
        status=VersionStatus(row.status),
        created_at=row.created_at,
        promoted_at=row.promoted_at,
    )


def _job_values(job: TrainingJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status.value,
        "reason": job.reason,
        "params": dict(job.params),
        "progress": dict(job.progress),
        "error": job.error,
        "version_id": job.version_id,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _job(row: TrainingJobRow) -> TrainingJob:
    return TrainingJob(
        id=row.id,
        status=JobStatus(row.status),
        reason=row.reason,
        params=row.params,
        progress=row.progress,
        error=row.error,
        version_id=row.version_id,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _dataset_row(dataset: StoredDataset) -> DatasetRow:
    return DatasetRow(
        hash=dataset.hash, path=dataset.path, counts=dict(dataset.counts), created_at=dataset.created_at
    )


def _dataset(row: DatasetRow) -> StoredDataset:
    return StoredDataset(hash=row.hash, path=row.path, counts=row.counts, created_at=row.created_at)

"""The learning loop's API under /api/v1: feedback on answers, model versions, promotion and rollback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, WebSocket, status
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from agentloop.adapters.storage.learning_repository import SqlLearningStore
from agentloop.application.learning.registry import ModelRegistry
from agentloop.application.learning.service import LearningService
from agentloop.domain.auth import Role
from agentloop.domain.events import FeedbackGiven, ModelUpdated
from agentloop.domain.learning import (
    Feedback,
    ModelVersion,
    Rating,
    TrainingJob,
    VersionStatus,
)
from agentloop.domain.model import Message, ToolCall
from agentloop.entrypoints.api.deps import ContainerDep
from agentloop.entrypoints.api.errors import problem_from
from agentloop.entrypoints.api.schemas import Body, ToolCallOut
from agentloop.entrypoints.api.security import PrincipalDep, TrainerDep, authenticate, socket_token
from agentloop.errors import AgentLoopError, NotFoundError, PermissionDeniedError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["learning"])

JOB_POLL_S = 0.5  # how often a training-progress socket looks at the job


# --- wiring -------------------------------------------------------------------------------------------------


@dataclass
class Learning:
    """The learning loop's parts of the container."""

    store: SqlLearningStore
    registry: ModelRegistry
    service: LearningService


async def get_learning(container: ContainerDep) -> Learning:
    return Learning(container.learning_store, container.registry, container.learning)


LearningDep = Annotated[Learning, Depends(get_learning)]


# --- bodies -------------------------------------------------------------------------------------------------


class CorrectionCall(Body):
    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


class FeedbackCreate(Body):
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(
        None, min_length=1, max_length=20000, description="The answer the model should have given."
    )
    correction_call: CorrectionCall | None = Field(None, description="The tool call it should have made.")

    def feedback(self, message: Message) -> Feedback:
        call = self.correction_call
        return Feedback(
            message.id,
            message.conversation_id,
            rating=None if self.rating is None else Rating(self.rating),
            correction=self.correction,
            correction_call=None if call is None else ToolCall(call.name, call.arguments),
        )


class FeedbackOut(BaseModel):
    id: str
    message_id: str
    conversation_id: str
    rating: Literal["up", "down"] | None
    correction: str | None
    correction_call: ToolCallOut | None
    created_at: datetime

    @classmethod
    def of(cls, feedback: Feedback) -> FeedbackOut:
        call = feedback.correction_call
        return cls(
            id=feedback.id,
            message_id=feedback.message_id,
            conversation_id=feedback.conversation_id,
            rating=None if feedback.rating is None else feedback.rating.value,
            correction=feedback.correction,
            correction_call=None if call is None else ToolCallOut.of(call),
            created_at=feedback.created_at,
        )


class ModelVersionOut(BaseModel):
    id: str
    status: VersionStatus
    serving: bool
    parent_id: str | None
    base_sha256: str
    adapter_sha256: str | None
    dataset_hash: str | None
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    promoted_at: datetime | None

    @classmethod
    def of(cls, version: ModelVersion) -> ModelVersionOut:
        v = version
        return cls(
            id=v.id,
            status=v.status,
            serving=v.status == VersionStatus.PROMOTED,
            parent_id=v.parent_id,
            base_sha256=v.base_sha256,
            adapter_sha256=v.adapter_sha256,
            dataset_hash=v.dataset_hash,
            hyperparameters=v.hyperparameters,
            metrics=v.metrics,
            created_at=v.created_at,
            promoted_at=v.promoted_at,
        )


class ModelSwitchOut(BaseModel):
    serving: str = Field(description="The version serving now.")
    previous: str | None = Field(description="The version that served before.")
    reason: str

    @classmethod
    def of(cls, event: ModelUpdated) -> ModelSwitchOut:
        return cls(serving=event.version_id, previous=event.previous_version_id, reason=event.reason)


# --- routes -------------------------------------------------------------------------------------------------


@router.post("/messages/{message_id}/feedback", status_code=status.HTTP_201_CREATED)
async def give_feedback(
    message_id: str,
    body: FeedbackCreate,
    container: ContainerDep,
    learning: LearningDep,
    principal: PrincipalDep,
) -> FeedbackOut:
    """Rate an assistant message of your own conversation or correct it; corrections become training
    examples."""
    message = await container.store.get_message(message_id)
    if not principal.owns(await container.store.conversation_owner(message.conversation_id)):
        raise NotFoundError("message", message_id)
    feedback = body.feedback(message)
    corrected = feedback.correction is not None or feedback.correction_call is not None
    event = FeedbackGiven(
        conversation_id=feedback.conversation_id,
        message_id=feedback.message_id,
        rating=body.rating,
        corrected=corrected,
    )
    await learning.store.add_feedback(feedback, [event])
    await _maybe_trigger(learning.service)
    return FeedbackOut.of(feedback)


@router.get("/conversations/{conversation_id}/feedback")
async def list_conversation_feedback(
    conversation_id: str, container: ContainerDep, learning: LearningDep, principal: PrincipalDep
) -> list[FeedbackOut]:
    """The ratings and corrections given on a conversation's answers, oldest first."""
    # 404 for an unknown conversation and for someone else's: the same answer, nothing leaks.
    if not principal.owns(await container.store.conversation_owner(conversation_id)):
        raise NotFoundError("conversation", conversation_id)
    return [FeedbackOut.of(feedback) for feedback in await learning.store.list_feedback(conversation_id)]


async def _maybe_trigger(service: LearningService) -> None:
    # Feedback is stored whatever happens here: a failed trigger check must not fail the request.
    try:
        job = await service.maybe_trigger()
    except AgentLoopError as exc:
        logger.warning("training trigger check failed: %s", exc)
        return
    if job is not None:
        logger.info("queued training job %s: enough new examples", job.id)


@router.get("/models")
async def list_models(learning: LearningDep, _: TrainerDep) -> list[ModelVersionOut]:
    """Every model version, newest first, with its status and evaluation metrics."""
    return [ModelVersionOut.of(version) for version in await learning.registry.list()]


@router.post("/models/{version_id}/promote")
async def promote_model(version_id: str, learning: LearningDep, _: TrainerDep) -> ModelSwitchOut:
    """Serve this version from now on; requests in flight finish on the previous one."""
    return ModelSwitchOut.of(await learning.registry.promote(version_id))


@router.post("/models/rollback")
async def rollback_model(learning: LearningDep, _: TrainerDep) -> ModelSwitchOut:
    """Undo the last promotion: serve again the version that served before."""
    return ModelSwitchOut.of(await learning.registry.rollback())


# --- training jobs ------------------------------------------------------------------------------------------


class TrainingJobCreate(Body):
    max_steps: int | None = Field(None, ge=1, le=10000, description="Optimizer steps (default: settings).")
    learning_rate: float | None = Field(None, gt=0, le=1.0)
    batch_size: int | None = Field(None, ge=1, le=256)
    min_examples: int | None = Field(None, ge=1, description="Fail unless at least this many examples.")

    def params(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump().items() if value is not None}


class TrainingJobOut(BaseModel):
    id: str
    status: str
    reason: str
    params: dict[str, Any]
    progress: dict[str, Any]
    error: str | None
    version_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: TrainingJob) -> TrainingJobOut:
        return cls(
            id=job.id,
            status=str(job.status),
            reason=job.reason,
            params=job.params,
            progress=job.progress,
            error=job.error,
            version_id=job.version_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


@router.post("/training/jobs", status_code=status.HTTP_202_ACCEPTED)
async def create_training_job(
    body: TrainingJobCreate, learning: LearningDep, _: TrainerDep
) -> TrainingJobOut:
    """Queue a training job for the worker (409 while another job is queued or running)."""
    return TrainingJobOut.of(await learning.service.submit(body.params()))


@router.get("/training/jobs")
async def list_training_jobs(
    learning: LearningDep, _: TrainerDep, limit: int = Query(20, ge=1, le=100)
) -> list[TrainingJobOut]:
    """Recent training jobs, newest first."""
    return [TrainingJobOut.of(job) for job in await learning.store.list_jobs(limit)]


@router.get("/training/jobs/{job_id}")
async def get_training_job(job_id: str, learning: LearningDep, _: TrainerDep) -> TrainingJobOut:
    """A training job with its progress (stage, step, loss, tokens/s, ETA) and outcome."""
    return TrainingJobOut.of(await learning.store.get_job(job_id))


@router.post("/training/jobs/{job_id}/cancel")
async def cancel_training_job(job_id: str, learning: LearningDep, _: TrainerDep) -> TrainingJobOut:
    """Cancel a queued or running job; the trainer stops after its next step."""
    return TrainingJobOut.of(await learning.service.cancel(job_id))


CLOSE_NOT_FOUND = 4404
CLOSE_POLICY_VIOLATION = 1008


async def follow_job(
    store: SqlLearningStore, job_id: str, interval_s: float
) -> AsyncIterator[TrainingJobOut]:
    """Yield the job each time it changes (status or progress), ending with its terminal state.

    The worker is another process and writes progress to the database; polling it is what lets every
    API replica stream the same job.
    """
    last: dict[str, Any] | None = None
    while True:
        job = await store.get_job(job_id)
        snapshot = TrainingJobOut.of(job).model_dump(mode="json")
        if snapshot != last:
            last = snapshot
            yield TrainingJobOut.of(job)
        if job.status.finished:
            return
        await asyncio.sleep(interval_s)


@router.websocket("/training/jobs/{job_id}/ws")
async def training_job_socket(websocket: WebSocket, job_id: str, container: ContainerDep) -> None:
    """Live progress of a training job: a {"type": "job", "job": {...}} event per change (stage, step, loss,
    tokens/s, ETA), then {"type": "end", "status": ...} when the job completes, fails or is cancelled.
    Needs the trainer role: authenticate with `?access_token=<token or API key>`."""
    await websocket.accept()
    store = container.learning_store
    try:
        principal = await authenticate(websocket, container, socket_token(websocket))
        if not principal.has(Role.TRAINER):
            raise PermissionDeniedError(f"this needs the trainer role; you are {principal.role}")
    except AgentLoopError as exc:
        await websocket.send_json({"type": "error", "status": problem_from(exc).status, "detail": str(exc)})
        await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=str(exc)[:120])
        return
    try:
        final = ""
        async for job in follow_job(store, job_id, JOB_POLL_S):
            await websocket.send_json({"type": "job", "job": job.model_dump(mode="json")})
            final = job.status
        await websocket.send_json({"type": "end", "status": final})
        await websocket.close()
    except NotFoundError as exc:
        await websocket.send_json({"type": "error", "status": 404, "detail": str(exc)})
        await websocket.close(code=CLOSE_NOT_FOUND, reason=str(exc))
    except WebSocketDisconnect:
        return

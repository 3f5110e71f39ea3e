"""SqlLearningStore against real SQLite and PostgreSQL (fixtures in tests/conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from agentloop.adapters.storage import SqlStore, create_sessionmaker
from agentloop.adapters.storage.learning_repository import SqlLearningStore, StoredDataset
from agentloop.domain.events import FeedbackGiven, ModelUpdated, TrainingCompleted, TrainingStarted
from agentloop.domain.learning import (
    BASE_VERSION,
    Feedback,
    JobStatus,
    ModelVersion,
    Rating,
    TrainingJob,
    VersionStatus,
)
from agentloop.domain.model import Agent, Conversation, Message, Role, ToolCall
from agentloop.errors import NotFoundError, ValidationError

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BASE_SHA = "b" * 64


@pytest.fixture
def learning(sql_engine: AsyncEngine) -> SqlLearningStore:
    return SqlLearningStore(create_sessionmaker(sql_engine))


async def new_turn(store: SqlStore, answer: str = "4") -> tuple[Conversation, Message, Message]:
    """A stored conversation with a question and its answer."""
    agent = await store.get_agent_by_name("calc")
    if agent is None:
        agent = Agent("calc")
        await store.create_agent(agent)
    conversation = Conversation(agent.id)
    await store.create_conversation(conversation)
    question = Message(conversation.id, Role.USER, "2+2?")
    reply = Message(conversation.id, Role.ASSISTANT, answer)
    await store.append(conversation.id, [question, reply])
    return conversation, question, reply


def version(ident: str, minutes: int = 0, **fields: object) -> ModelVersion:
    return ModelVersion(
        ident,
        BASE_SHA,
        parent_id=BASE_VERSION,
        adapter_path=f"/adapters/{ident}.gguf",
        adapter_sha256="a" * 64,
        dataset_hash="d" * 64,
        hyperparameters={"rank": 8, "lr": 2e-4},
        created_at=T0 + timedelta(minutes=minutes),
        **fields,  # type: ignore[arg-type]
    )


# --- feedback -----------------------------------------------------------------------------------------------


async def test_feedback_round_trips_with_its_event(sql_store: SqlStore, learning: SqlLearningStore) -> None:
    conversation, _, reply = await new_turn(sql_store)
    call = ToolCall("calculator", {"expression": "2+2", "nested": [1, None]})
    up = Feedback(reply.id, conversation.id, rating=Rating.UP, created_at=T0)
    later = T0 + timedelta(seconds=1)
    fixed = Feedback(reply.id, conversation.id, correction="It is 4.", correction_call=call, created_at=later)
    event = FeedbackGiven(conversation_id=conversation.id, message_id=reply.id, rating="up", corrected=False)

    await learning.add_feedback(up, [event])
    await learning.add_feedback(fixed)

    assert await learning.list_feedback() == [up, fixed]
    assert await learning.list_feedback(conversation.id) == [up, fixed]
    assert await learning.list_feedback("other") == []
    events = await sql_store.list_events(conversation.id)
    assert [(e["name"], e["payload"]) for e in events if e["name"] == "FeedbackGiven"] == [
        ("FeedbackGiven", event.payload())
    ]


async def test_feedback_needs_an_existing_assistant_message(
    sql_store: SqlStore, learning: SqlLearningStore
) -> None:
    conversation, question, reply = await new_turn(sql_store)

    with pytest.raises(NotFoundError):
        await learning.add_feedback(Feedback("missing", conversation.id, rating=Rating.UP))
    with pytest.raises(ValidationError) as caught:
        await learning.add_feedback(Feedback(question.id, conversation.id, rating=Rating.DOWN))
    assert caught.value.field == "message_id"
    with pytest.raises(ValidationError):
        await learning.add_feedback(Feedback(reply.id, "another-conversation", rating=Rating.UP))
    assert await learning.count_feedback_since(None) == 0


async def test_feedback_since_and_counts(sql_store: SqlStore, learning: SqlLearningStore) -> None:
    conversation, _, reply = await new_turn(sql_store)
    for minutes in (0, 10, 20):
        created = T0 + timedelta(minutes=minutes)
        await learning.add_feedback(Feedback(reply.id, conversation.id, Rating.UP, created_at=created))

    assert await learning.count_feedback_since(None) == 3
    assert await learning.count_feedback_since(T0 + timedelta(minutes=10)) == 2
    assert await learning.count_feedback_since(T0 + timedelta(hours=1)) == 0
    later = await learning.list_feedback(since=T0 + timedelta(minutes=5))
    assert [f.created_at for f in later] == [T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)]


async def test_conversations_with_feedback(sql_store: SqlStore, learning: SqlLearningStore) -> None:
    old, _, old_reply = await new_turn(sql_store, "old")
    new, _, new_reply = await new_turn(sql_store, "new")
    await new_turn(sql_store, "never rated")
    await learning.add_feedback(Feedback(old_reply.id, old.id, Rating.DOWN, created_at=T0))
    await learning.add_feedback(Feedback(new_reply.id, new.id, Rating.UP, created_at=T0 + timedelta(hours=1)))
    late = Feedback(old_reply.id, old.id, correction="better", created_at=T0 + timedelta(hours=2))
    await learning.add_feedback(late)

    everything = await learning.conversations_with_feedback(None, limit=10)
    assert [(c.id, [f.created_at for f in fs]) for c, fs in everything] == [
        (old.id, [T0, T0 + timedelta(hours=2)]),
        (new.id, [T0 + timedelta(hours=1)]),
    ]
    conversation, _ = everything[0]
    assert [m.content for m in conversation.messages] == ["2+2?", "old"]

    recent = await learning.conversations_with_feedback(T0 + timedelta(minutes=30), limit=1)
    assert [(c.id, fs) for c, fs in recent] == [(old.id, [late])]
    assert await learning.conversations_with_feedback(T0 + timedelta(days=1), limit=10) == []


async def test_feedback_goes_with_its_conversation(sql_store: SqlStore, learning: SqlLearningStore) -> None:
    conversation, _, reply = await new_turn(sql_store)
    await learning.add_feedback(Feedback(reply.id, conversation.id, Rating.UP))

    await sql_store.delete_conversation(conversation.id)

    assert await learning.list_feedback() == []


# --- model versions -----------------------------------------------------------------------------------------


async def test_versions_round_trip_newest_first(learning: SqlLearningStore) -> None:
    base = ModelVersion(BASE_VERSION, BASE_SHA, created_at=T0)
    base.transition(VersionStatus.PROMOTED)
    v1, v2 = version("v1", 1), version("v2", 2, metrics={"accuracy": 0.5})
    for item in (base, v2, v1):
        await learning.add_version(item)

    assert await learning.get_version("v2") == v2
    assert await learning.list_versions() == [v2, v1, base]
    assert await learning.serving_version() == base
    with pytest.raises(NotFoundError):
        await learning.get_version("v9")
    with pytest.raises(ValidationError):
        await learning.add_version(version("v1"))


async def test_save_versions_updates_status_metrics_and_records_events(
    sql_store: SqlStore, learning: SqlLearningStore
) -> None:
    base = ModelVersion(BASE_VERSION, BASE_SHA, status=VersionStatus.PROMOTED, promoted_at=T0)
    v1 = version("v1")
    await learning.add_version(base)
    await learning.add_version(v1)
    base.transition(VersionStatus.RETIRED)
    v1.transition(VersionStatus.PROMOTED)
    v1.metrics = {"accuracy": 0.9, "per_tool": {"calculator": 1.0}}
    event = ModelUpdated(version_id="v1", previous_version_id=BASE_VERSION, reason="manual")

    await learning.save_versions([base, v1], [event])

    assert await learning.get_version(BASE_VERSION) == base
    assert await learning.get_version("v1") == v1
    assert await learning.serving_version() == v1
    stored = await sql_store.list_events()
    assert [(e["name"], e["payload"]) for e in stored] == [("ModelUpdated", event.payload())]


async def test_save_of_an_unknown_version_changes_nothing(learning: SqlLearningStore) -> None:
    v1 = version("v1")
    await learning.add_version(v1)
    changed = version("v1", status=VersionStatus.REJECTED)

    with pytest.raises(NotFoundError):
        await learning.save_versions([changed, version("ghost")])
    with pytest.raises(NotFoundError):
        await learning.save_version(version("ghost"))

    assert (await learning.get_version("v1")).status == VersionStatus.CANDIDATE


async def test_next_version_id(learning: SqlLearningStore) -> None:
    assert await learning.next_version_id() == "v1"
    await learning.add_version(ModelVersion(BASE_VERSION, BASE_SHA))
    assert await learning.next_version_id() == "v1"
    for ident in ("v1", "v2", "v10", "vx", "v3-rc"):
        await learning.add_version(version(ident))
    assert await learning.next_version_id() == "v11"


# --- training jobs ------------------------------------------------------------------------------------------


async def test_jobs_round_trip_and_update(learning: SqlLearningStore) -> None:
    job = TrainingJob(params={"epochs": 2}, reason="feedback", created_at=T0)
    await learning.add_job(job)
    assert await learning.get_job(job.id) == job
    assert await learning.active_job() == job

    job.status = JobStatus.RUNNING
    job.started_at = T0 + timedelta(minutes=1)
    job.progress = {"step": 3, "loss": 1.25}
    await learning.save_job(job)
    assert await learning.get_job(job.id) == job
    assert await learning.active_job() == job

    job.status, job.finished_at, job.version_id = JobStatus.COMPLETED, T0 + timedelta(minutes=9), "v1"
    await learning.save_job(job)
    assert await learning.active_job() is None
    assert await learning.last_finished_job() == job
    with pytest.raises(NotFoundError):
        await learning.get_job("missing")
    with pytest.raises(NotFoundError):
        await learning.save_job(TrainingJob())


async def test_job_queries(learning: SqlLearningStore) -> None:
    failed = TrainingJob(
        status=JobStatus.FAILED, error="out of memory", created_at=T0, finished_at=T0 + timedelta(hours=3)
    )
    done = TrainingJob(
        status=JobStatus.COMPLETED, created_at=T0 + timedelta(hours=1), finished_at=T0 + timedelta(hours=2)
    )
    queued = TrainingJob(created_at=T0 + timedelta(hours=5))
    running = TrainingJob(status=JobStatus.RUNNING, created_at=T0 + timedelta(hours=4))
    for job in (failed, done, queued, running):
        await learning.add_job(job)

    assert await learning.list_jobs(limit=3) == [queued, running, done]
    assert await learning.active_job() == running
    assert await learning.last_finished_job() == failed


async def test_events_without_a_conversation(sql_store: SqlStore, learning: SqlLearningStore) -> None:
    started = TrainingStarted(job_id="j1", reason="threshold")
    done = TrainingCompleted(job_id="j1", version_id="v1", promoted=True)

    await learning.add_events([started, done])

    stored = {e["name"]: e["payload"] for e in await sql_store.list_events()}
    assert stored == {"TrainingStarted": started.payload(), "TrainingCompleted": done.payload()}


# --- datasets -----------------------------------------------------------------------------------------------


async def test_datasets_are_content_addressed(learning: SqlLearningStore) -> None:
    dataset = StoredDataset("h" * 64, "/data/datasets/hhh.jsonl", {"examples": 12, "corrections": 3}, T0)
    await learning.add_dataset(dataset)
    await learning.add_dataset(StoredDataset("h" * 64, "/elsewhere.jsonl"))  # same content: kept as is

    assert await learning.get_dataset("h" * 64) == dataset
    with pytest.raises(NotFoundError):
        await learning.get_dataset("missing")

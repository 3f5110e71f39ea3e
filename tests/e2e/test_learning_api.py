"""Feedback and model-version routes in-process: the real app, bootstrap and SQLite, with a scripted
FakeEngine that can also switch versions (as the embedded engine does)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from agentloop.adapters.storage import SqlStore, create_sessionmaker
from agentloop.adapters.storage.learning_repository import SqlLearningStore
from agentloop.domain.learning import BASE_VERSION, JobStatus, ModelVersion, VersionStatus
from agentloop.entrypoints.api import create_app
from agentloop.entrypoints.api import learning as learning_routes
from agentloop.settings import Settings
from auth_helpers import admin_key, bearer, fast_auth
from fakes import FakeEngine

BASE_SHA = "b" * 64
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'


class SwappingEngine(FakeEngine):
    """A FakeEngine that is also an AdapterHost: it records every switch and reports the served version."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served: list[tuple[str, Path | None]] = []

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        self.served.append((version_id, adapter_path))
        self._version = version_id


def settings_for(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=tmp_path, cache_dir=tmp_path / "cache", version_poll_s=0.05, _env_file=None, **fast_auth()
    )


@pytest.fixture
def engine() -> FakeEngine:
    return SwappingEngine()


@pytest.fixture
async def app(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[FastAPI]:
    app = create_app(settings_for(tmp_path / "data"), engine=engine)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    headers = bearer(await admin_key(app))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
        yield client


@pytest.fixture
def learning(app: FastAPI) -> SqlLearningStore:
    """A second store on the app's database, as another process (the trainer) would use it."""
    return SqlLearningStore(create_sessionmaker(app.state.container.database))


@pytest.fixture
def store(app: FastAPI) -> SqlStore:
    store: SqlStore = app.state.container.store
    return store


async def seed_versions(learning: SqlLearningStore, tmp_path: Path, *idents: str) -> None:
    """The base (serving) and one candidate per ident, each with an adapter file on disk."""
    base = ModelVersion(BASE_VERSION, BASE_SHA)
    base.transition(VersionStatus.PROMOTED)
    await learning.add_version(base)
    for ident in idents:
        adapter = tmp_path / f"{ident}.gguf"
        adapter.write_bytes(f"lora {ident}".encode())
        digest = hashlib.sha256(adapter.read_bytes()).hexdigest()
        await learning.add_version(
            ModelVersion(ident, BASE_SHA, BASE_VERSION, str(adapter), digest, metrics={"accuracy": 0.8})
        )


async def answered(client: httpx.AsyncClient, engine: FakeEngine) -> dict[str, Any]:
    """One turn with a tool step; returns the stored conversation."""
    engine.script(CALL, "It is 4.")
    conversation_id = (await client.post("/api/v1/conversations", json={})).json()["id"]
    await client.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "2+2?"})
    conversation: dict[str, Any] = (await client.get(f"/api/v1/conversations/{conversation_id}")).json()
    return conversation


# --- feedback -----------------------------------------------------------------------------------------------


async def test_rating_an_answer(
    client: httpx.AsyncClient, engine: FakeEngine, learning: SqlLearningStore, store: SqlStore
) -> None:
    conversation = await answered(client, engine)
    answer = conversation["messages"][-1]

    response = await client.post(f"/api/v1/messages/{answer['id']}/feedback", json={"rating": "up"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["message_id"], body["conversation_id"]) == (answer["id"], conversation["id"])
    assert (body["rating"], body["correction"], body["correction_call"]) == ("up", None, None)
    [stored] = await learning.list_feedback(conversation["id"])
    assert stored.id == body["id"]
    events = [e for e in await store.list_events(conversation["id"]) if e["name"] == "FeedbackGiven"]
    assert [e["payload"]["rating"] for e in events] == ["up"]
    assert events[0]["payload"]["corrected"] is False


async def test_correcting_a_tool_call(
    client: httpx.AsyncClient, engine: FakeEngine, learning: SqlLearningStore
) -> None:
    conversation = await answered(client, engine)
    call_message = conversation["messages"][1]
    fix = {"name": "calculator", "arguments": {"expression": "2*2"}}

    response = await client.post(
        f"/api/v1/messages/{call_message['id']}/feedback",
        json={"rating": "down", "correction": "Use multiplication.", "correction_call": fix},
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["correction_call"]["name"] == "calculator"
    assert body["correction_call"]["arguments"] == {"expression": "2*2"}
    [stored] = await learning.list_feedback()
    assert stored.correction == "Use multiplication."
    assert stored.correction_call is not None and stored.correction_call.arguments == {"expression": "2*2"}


@pytest.mark.parametrize(
    "body",
    [{}, {"rating": None}, {"rating": "meh"}, {"correction": ""}, {"rating": "up", "extra": 1}],
)
async def test_feedback_needs_a_rating_or_a_correction(
    client: httpx.AsyncClient, engine: FakeEngine, body: dict[str, Any]
) -> None:
    answer = (await answered(client, engine))["messages"][-1]

    response = await client.post(f"/api/v1/messages/{answer['id']}/feedback", json=body)

    assert response.status_code == 422, response.text


async def test_feedback_on_an_unknown_or_user_message(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    question = (await answered(client, engine))["messages"][0]

    unknown = await client.post("/api/v1/messages/nope/feedback", json={"rating": "up"})
    on_user = await client.post(f"/api/v1/messages/{question['id']}/feedback", json={"rating": "up"})

    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "message nope not found"
    assert on_user.status_code == 422
    assert on_user.json()["field"] == "message_id"


# --- model versions -----------------------------------------------------------------------------------------


async def test_models_are_listed_with_the_serving_flag(
    client: httpx.AsyncClient, learning: SqlLearningStore, tmp_path: Path
) -> None:
    assert (await client.get("/api/v1/models")).json() == []  # the fake engine has no model file
    await seed_versions(learning, tmp_path, "v1")

    models = (await client.get("/api/v1/models")).json()

    assert [(m["id"], m["status"], m["serving"]) for m in models] == [
        ("v1", "candidate", False),
        (BASE_VERSION, "promoted", True),
    ]
    assert models[0]["metrics"] == {"accuracy": 0.8}
    assert models[0]["created_at"] and models[1]["promoted_at"]


async def test_promote_and_roll_back(
    client: httpx.AsyncClient, engine: SwappingEngine, learning: SqlLearningStore, tmp_path: Path
) -> None:
    await seed_versions(learning, tmp_path, "v1", "v2")

    for ident, previous in (("v1", BASE_VERSION), ("v2", "v1")):
        response = await client.post(f"/api/v1/models/{ident}/promote")
        assert response.status_code == 200, response.text
        assert response.json() == {"serving": ident, "previous": previous, "reason": "manual"}
    assert engine.served[-2:] == [("v1", tmp_path / "v1.gguf"), ("v2", tmp_path / "v2.gguf")]
    assert engine.model_version == "v2"

    back = await client.post("/api/v1/models/rollback")
    assert back.json() == {"serving": "v1", "previous": "v2", "reason": "rollback"}
    assert engine.model_version == "v1"
    back = await client.post("/api/v1/models/rollback")
    assert back.json()["serving"] == BASE_VERSION
    assert engine.served[-1] == (BASE_VERSION, None)
    assert (await client.post("/api/v1/models/rollback")).status_code == 422

    serving = [m["id"] for m in (await client.get("/api/v1/models")).json() if m["serving"]]
    assert serving == [BASE_VERSION]


async def test_promote_refusals(
    client: httpx.AsyncClient, engine: SwappingEngine, learning: SqlLearningStore, tmp_path: Path
) -> None:
    await seed_versions(learning, tmp_path, "v1")
    await wait_served(engine, [(BASE_VERSION, None)])  # the server follows the stored version

    assert (await client.post("/api/v1/models/v9/promote")).status_code == 404
    assert (await client.post(f"/api/v1/models/{BASE_VERSION}/promote")).status_code == 422
    (tmp_path / "v1.gguf").write_bytes(b"tampered")
    tampered = await client.post("/api/v1/models/v1/promote")

    assert tampered.status_code == 422
    assert tampered.json()["field"] == "adapter_sha256"
    assert engine.served == [(BASE_VERSION, None)]
    assert (await learning.serving_version()) == await learning.get_version(BASE_VERSION)


async def test_the_server_serves_the_stored_version_on_first_use(
    client: httpx.AsyncClient, engine: SwappingEngine, learning: SqlLearningStore, tmp_path: Path
) -> None:
    await seed_versions(learning, tmp_path, "v1")
    v1 = await learning.get_version("v1")
    base = await learning.get_version(BASE_VERSION)
    base.transition(VersionStatus.RETIRED)
    v1.transition(VersionStatus.PROMOTED)
    await learning.save_versions([base, v1])  # as `agentloop models promote` does from another process

    await wait_served(engine, [("v1", tmp_path / "v1.gguf")], tail=True)


@pytest.mark.parametrize("engine", [FakeEngine()], ids=["fixed-version-engine"])
async def test_an_engine_that_cannot_switch_versions_records_the_promotion(
    client: httpx.AsyncClient, learning: SqlLearningStore, tmp_path: Path
) -> None:
    await seed_versions(learning, tmp_path, "v1")

    response = await client.post("/api/v1/models/v1/promote")

    assert response.status_code == 200
    assert (await learning.get_version("v1")).status == VersionStatus.PROMOTED


async def test_a_broken_promoted_adapter_does_not_break_the_routes(
    client: httpx.AsyncClient, engine: SwappingEngine, learning: SqlLearningStore, tmp_path: Path
) -> None:
    await seed_versions(learning, tmp_path, "v1")
    base, v1 = await learning.get_version(BASE_VERSION), await learning.get_version("v1")
    base.transition(VersionStatus.RETIRED)
    v1.transition(VersionStatus.PROMOTED)
    await learning.save_versions([base, v1])
    (tmp_path / "v1.gguf").unlink()

    await asyncio.sleep(0.2)  # a few follow cycles: the missing adapter is refused, the engine stays put
    listed = await client.get("/api/v1/models")

    assert listed.status_code == 200
    assert all(version != "v1" for version, _ in engine.served)
    assert (await client.post("/api/v1/models/rollback")).json()["serving"] == BASE_VERSION


async def wait_served(
    engine: SwappingEngine, expected: list[tuple[str, Path | None]], tail: bool = False
) -> None:
    # The server follows the database on a timer: it may have served base before v1 was promoted.
    def seen() -> list[tuple[str, Path | None]]:
        return engine.served[-len(expected) :] if tail else engine.served

    for _ in range(250):
        if seen() == expected:
            return
        await asyncio.sleep(0.02)
    assert seen() == expected


# --- training jobs: REST and the progress WebSocket ------------------------------------------------------


@pytest.fixture
def sync_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(learning_routes, "JOB_POLL_S", 0.02)
    with TestClient(create_app(settings_for(tmp_path / "data"), engine=SwappingEngine())) as client:
        assert client.portal is not None
        client.headers.update(bearer(client.portal.call(admin_key, cast(FastAPI, client.app))))
        yield client


def test_training_job_rest_lifecycle(sync_client: TestClient) -> None:
    created = sync_client.post("/api/v1/training/jobs", json={"max_steps": 3})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] == "queued" and job["params"] == {"max_steps": 3}

    again = sync_client.post("/api/v1/training/jobs", json={})
    assert again.status_code == 409 and "already" in again.json()["detail"]
    assert sync_client.post("/api/v1/training/jobs", json={"max_steps": 0}).status_code == 422

    assert sync_client.get(f"/api/v1/training/jobs/{job['id']}").json()["id"] == job["id"]
    assert [j["id"] for j in sync_client.get("/api/v1/training/jobs").json()] == [job["id"]]
    cancelled = sync_client.post(f"/api/v1/training/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert sync_client.get("/api/v1/training/jobs/nope").status_code == 404


def test_training_progress_streams_over_the_websocket(sync_client: TestClient) -> None:
    job_id = sync_client.post("/api/v1/training/jobs", json={}).json()["id"]
    app = cast(FastAPI, sync_client.app)
    store: SqlLearningStore = app.state.container.learning_store
    portal = sync_client.portal
    assert portal is not None

    async def report(step: int) -> None:
        job = await store.get_job(job_id)
        job.status = JobStatus.RUNNING
        job.progress = {"stage": "train", "step": step, "max_steps": 4, "loss": 1.0 / step, "eta_s": 4 - step}
        await store.save_job(job)

    token = sync_client.headers["Authorization"].removeprefix("Bearer ")
    url = f"/api/v1/training/jobs/{job_id}/ws?access_token={token}"
    with sync_client.websocket_connect(url) as websocket:
        first = websocket.receive_json()
        assert first["type"] == "job" and first["job"]["status"] == "queued"
        seen = []
        for step in (1, 2):
            portal.call(report, step)
            event = websocket.receive_json()
            assert event["type"] == "job" and event["job"]["status"] == "running"
            seen.append(event["job"]["progress"]["step"])
        assert seen == [1, 2]
        assert sync_client.post(f"/api/v1/training/jobs/{job_id}/cancel").status_code == 200
        assert websocket.receive_json()["job"]["status"] == "cancelled"
        assert websocket.receive_json() == {"type": "end", "status": "cancelled"}


def test_training_progress_socket_needs_a_trainer(sync_client: TestClient) -> None:
    sync_client.headers.pop("Authorization")
    with sync_client.websocket_connect("/api/v1/training/jobs/nope/ws") as websocket:
        assert websocket.receive_json()["status"] == 401
        with pytest.raises(WebSocketDisconnect) as closed:
            websocket.receive_json()
    assert closed.value.code == 1008


def test_training_progress_socket_unknown_job_closes_4404(sync_client: TestClient) -> None:
    token = sync_client.headers["Authorization"].removeprefix("Bearer ")
    with sync_client.websocket_connect(f"/api/v1/training/jobs/nope/ws?access_token={token}") as websocket:
        assert websocket.receive_json()["status"] == 404
        with pytest.raises(WebSocketDisconnect) as closed:
            websocket.receive_json()
    assert closed.value.code == 4404

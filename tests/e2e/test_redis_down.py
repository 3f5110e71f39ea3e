"""The app started while its Redis is down: turns are served without cache, readiness says "degraded" (200),
and a training job that cannot be queued is a 503 that leaves no job stuck as "queued"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agentloop.entrypoints.api import create_app
from auth_helpers import admin_key, bearer, fast_auth
from fakes import FakeEngine
from services import free_port


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    from agentloop.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        breaker_failures=1,
        _env_file=None,
        **fast_auth(),
    )
    app = create_app(settings, engine=FakeEngine(["First.", "Second."]))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as http,
    ):
        http.headers.update(bearer(await admin_key(app)))
        yield http


async def test_turns_are_served_without_redis(client: httpx.AsyncClient) -> None:
    conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
    for text, answer in (("one", "First."), ("two", "Second.")):
        turn = await client.post(f"/api/v1/conversations/{conversation}/messages", json={"content": text})
        assert turn.status_code == 200 and turn.json()["answer"] == answer
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    cache = ready.json()["checks"]["cache"]
    assert cache["ok"] is False and cache["breaker"]["state"] == "open" and cache["hits"] == 0


async def test_a_job_that_cannot_be_queued_is_a_503_and_not_left_queued(client: httpx.AsyncClient) -> None:
    for _ in range(2):  # the failed job does not block the next attempt with a 409
        reply = await client.post("/api/v1/training/jobs", json={})
        assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
        assert "job queue unavailable" in reply.json()["detail"]
    jobs = (await client.get("/api/v1/training/jobs")).json()
    assert [job["status"] for job in jobs] == ["failed", "failed"]

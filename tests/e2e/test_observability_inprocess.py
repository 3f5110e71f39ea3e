"""The page, /metrics, correlation ids and request logs, in-process: the real app, bootstrap and SQLite with a
scripted FakeEngine."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from agentloop.entrypoints.api import create_app
from agentloop.settings import Settings
from auth_helpers import admin_key, bearer, fast_auth
from fakes import FakeEngine

CALC_CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
TURN_ROUTE = "/api/v1/conversations/{conversation_id}/messages"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def app(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[FastAPI]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path, cache_dir=tmp_path / "cache", log_json=True, _env_file=None, **fast_auth()
    )
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    headers = bearer(await admin_key(app))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
        yield client


def scrape_values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def run_calculator_turn(client: httpx.AsyncClient, engine: FakeEngine) -> str:
    engine.script(CALC_CALL, "2 + 2 = 4.")
    created = await client.post("/api/v1/conversations", json={"title": "metrics"})
    conversation_id = str(created.json()["id"])
    turn = await client.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "2+2?"})
    assert turn.status_code == 200, turn.text
    return conversation_id


async def test_the_page_and_its_assets_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>Gemma Agent Loop</title>" in page.text
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = await client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
    assert (await client.get("/static/missing.js")).status_code == 404


async def test_metrics_after_a_turn_and_a_queued_training_job(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    await run_calculator_turn(client, engine)
    queued = await client.post("/api/v1/training/jobs", json={"max_steps": 1})
    assert queued.status_code == 202, queued.text

    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values = scrape_values(response.text)

    def get(name: str, **labels: str) -> float:
        return values.get((name, frozenset(labels.items())), -1.0)

    assert get("agent_request_duration_seconds_count", method="POST", endpoint=TURN_ROUTE, status="200") == 1
    assert get("tool_executions_total", tool_name="calculator", status="ok") == 1
    assert get("agent_inference_duration_seconds_count") == 2  # the tool call, then the answer
    assert get("agent_time_to_first_token_seconds_count") == 2
    assert get("agent_generated_tokens_total") > 0
    assert get("agent_active_conversations") == 0  # the turn is over
    assert get("agent_events_processed_total", event="ToolExecuted") == 1
    assert get("agent_events_processed_total", event="ResponseGenerated") == 1
    assert get("agent_model_version_info", version="fake-1") == 1
    assert get("agent_training_jobs", status="queued") == 1
    assert get("agent_training_jobs", status="failed") == 0
    assert 0.0 <= get("agent_prompt_cache_hit_ratio") <= 1.0


async def test_unknown_paths_share_one_series(client: httpx.AsyncClient) -> None:
    for path in ("/nope/1", "/nope/2"):
        assert (await client.get(path)).status_code == 404
    values = scrape_values((await client.get("/metrics")).text)
    key = (
        "agent_request_duration_seconds_count",
        frozenset({"method": "GET", "endpoint": "unmatched", "status": "404"}.items()),
    )
    assert values[key] == 2


async def test_request_ids_are_echoed_or_made_and_land_in_the_json_logs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    given = await client.get("/api/v1/tools", headers={"X-Request-ID": "trace-123"})
    assert given.headers["X-Request-ID"] == "trace-123"
    made = await client.get("/api/v1/tools")
    assert len(made.headers["X-Request-ID"]) == 32
    forged = await client.get("/api/v1/tools", headers={"X-Request-ID": "a b\nINFO fake line"})
    assert forged.headers["X-Request-ID"] != "a b\nINFO fake line"

    # Rendered by the handler the app installed (AGENTLOOP_LOG_JSON): one JSON object per line.
    handler = logging.getLogger().handlers[0]
    lines = [
        json.loads(handler.format(record)) for record in caplog.records if record.name == "agentloop.http"
    ]
    requests = [line for line in lines if line.get("event") == "request"]
    assert {"trace-123", made.headers["X-Request-ID"]} <= {line["request_id"] for line in requests}
    mine = next(line for line in requests if line["request_id"] == "trace-123")
    assert (mine["method"], mine["endpoint"], mine["status"]) == ("GET", "/api/v1/tools", 200)


async def test_feedback_of_a_conversation_is_listed(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    conversation_id = await run_calculator_turn(client, engine)
    detail = (await client.get(f"/api/v1/conversations/{conversation_id}")).json()
    answer = detail["messages"][-1]["id"]
    assert (await client.get(f"/api/v1/conversations/{conversation_id}/feedback")).json() == []
    rated = await client.post(f"/api/v1/messages/{answer}/feedback", json={"rating": "up"})
    assert rated.status_code == 201, rated.text
    listed = (await client.get(f"/api/v1/conversations/{conversation_id}/feedback")).json()
    assert [(f["message_id"], f["rating"]) for f in listed] == [(answer, "up")]
    assert (await client.get("/api/v1/conversations/nope/feedback")).status_code == 404

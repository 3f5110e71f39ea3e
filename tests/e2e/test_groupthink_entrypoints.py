"""GroupThink from the outside: `mode: "groupthink"` on the native API and `agentloop ask --groupthink`, over
the real bootstrap, SQLite and tools, with a scripted FakeEngine (one script per sample)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from agentloop.entrypoints.api import create_app
from agentloop.entrypoints.cli import app as cli_app
from agentloop.settings import Settings
from auth_helpers import admin_key, bearer, fast_auth
from fakes import FakeEngine

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
CALL_SPACED = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>'
# Samples 0 and 1 call the calculator (written differently) and answer 4; sample 2 guesses 5 (a number no tool
# gave: it weighs 0.25, so the agreement is 2 / 2.25). The script is
# answered in call order, so the samples run one after another (max_parallel 1), three of them with two to
# agree (the defaults are 5 and 3).
SCRIPT = [CALL, "2+2 is 4.", CALL_SPACED, "The answer is 4.", "5"]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        _env_file=None,
        max_parallel=1,
        groupthink_samples=3,
        groupthink_min_support=2,
        **fast_auth(),
    )
    app = create_app(settings, engine=FakeEngine(SCRIPT))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    headers = bearer(await admin_key(app))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
        yield client


async def test_groupthink_mode_returns_the_consensus_and_stores_it(client: httpx.AsyncClient) -> None:
    conversation = (await client.post("/api/v1/conversations", json={})).json()
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    response = await client.post(url, json={"content": "What is 2+2?", "mode": "groupthink"})
    assert response.status_code == 200, response.text
    turn = response.json()
    assert turn["answer"] == "2+2 is 4."
    assert [s["result"] for s in turn["steps"]] == ["4"]
    vote = turn["groupthink"]
    assert vote["agreement"] == pytest.approx(2 / 2.25, abs=1e-3) and vote["samples"] == 3 and vote["labeled"]
    assert vote["votes"][0]["samples"] == [0, 1]
    assert [d["answer"] for d in vote["dissent"]] == ["5"]
    stored = (await client.get(f"/api/v1/conversations/{conversation['id']}")).json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[-1]["id"] == turn["message_id"]


async def test_an_unknown_mode_is_a_422_naming_the_field(client: httpx.AsyncClient) -> None:
    conversation = (await client.post("/api/v1/conversations", json={})).json()
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    response = await client.post(url, json={"content": "hi", "mode": "crowd"})
    assert response.status_code == 422 and "mode" in response.text


def run_cli(tmp_path: Path, *args: str, engine: FakeEngine | None = None) -> Any:
    env = {
        "AGENTLOOP_DATA_DIR": None,
        "AGENTLOOP_DATABASE_URL": None,
        "AGENTLOOP_CACHE_DIR": str(tmp_path / "c"),
        "AGENTLOOP_MAX_PARALLEL": "1",
        "AGENTLOOP_GROUPTHINK_SAMPLES": "3",
        "AGENTLOOP_GROUPTHINK_MIN_SUPPORT": "2",
    }
    obj = {"engine": engine} if engine is not None else None
    return CliRunner().invoke(cli_app, ["--data-dir", str(tmp_path / "d"), *args], env=env, obj=obj)


def test_ask_groupthink_json_shows_agreement_and_dissent(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "ask", "What is 2+2?", "--groupthink", "--json", engine=FakeEngine(SCRIPT))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"] == "2+2 is 4." and data["steps"][0]["name"] == "calculator"
    assert data["groupthink"]["agreement"] == pytest.approx(2 / 2.25, abs=1e-3)
    assert data["groupthink"]["labeled"] and data["groupthink"]["dissent"][0]["answer"] == "5"


def test_ask_groupthink_text_prints_the_answer_and_the_vote(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "ask", "What is 2+2?", "--groupthink", engine=FakeEngine(SCRIPT))
    assert result.exit_code == 0, result.output
    assert "2+2 is 4." in result.stdout and "agreement 89% of 3 samples" in result.stdout
    assert "dissent" in result.stdout


def test_improve_refuses_zero_cycles(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "improve", "--cycles", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output

"""The HTTP and WebSocket API in-process: the real app, bootstrap and SQLite, with a scripted FakeEngine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from agentloop.entrypoints.api import create_app
from agentloop.errors import InferenceError
from agentloop.settings import Settings
from auth_helpers import admin_key, bearer, fast_auth
from fakes import FakeEngine  # tests/ is on sys.path through tests/conftest.py

CALC_CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
CALC_ANSWER = "2 + 2 = 4."
CALC_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate arithmetic.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


def settings_for(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", _env_file=None, **fast_auth())  # type: ignore[call-arg]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def app(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[FastAPI]:
    app = create_app(settings_for(tmp_path), engine=engine)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(app) as client:
        yield client


@asynccontextmanager
async def admin_client(app: FastAPI, **transport: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on a started app, holding a fresh admin API key."""
    headers = bearer(await admin_key(app))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app, **transport), base_url="http://test", headers=headers
    ) as client:
        yield client


@pytest.fixture
async def oai(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    # openai's client is built on httpx2 but also takes a classic httpx client, which mypy does not know.
    http: Any = httpx.AsyncClient(transport=httpx.ASGITransport(app))
    async with openai.AsyncOpenAI(
        base_url="http://test/v1", api_key=await admin_key(app), http_client=http, max_retries=0
    ) as oai:
        yield oai


async def new_conversation(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/api/v1/conversations", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- native API -------------------------------------------------------------------------------------------


async def test_turn_runs_the_calculator_and_answers(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script(CALC_CALL, CALC_ANSWER)
    conversation_id = await new_conversation(client, title="maths")

    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages", json={"content": "2+2?"}
    )

    assert response.status_code == 200, response.text
    turn = response.json()
    assert turn["answer"] == CALC_ANSWER
    assert turn["conversation_id"] == conversation_id
    assert turn["steps"] == [
        {"name": "calculator", "arguments": {"expression": "2+2"}, "result": "4", "ok": True}
    ]
    assert turn["usage"]["prompt_tokens"] > 0 and turn["usage"]["completion_tokens"] > 0
    assert turn["model_version"] == "fake-1"
    assert turn["latency_ms"] >= 0


async def test_conversation_lists_every_step_in_order(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script(CALC_CALL, CALC_ANSWER)
    conversation_id = await new_conversation(client)
    turn = (
        await client.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "2+2?"})
    ).json()

    response = await client.get(f"/api/v1/conversations/{conversation_id}")

    assert response.status_code == 200
    messages = response.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    user, call, result, answer = messages
    assert user["content"] == "2+2?"
    assert call["tool_call"]["name"] == "calculator" and call["tool_call"]["arguments"] == {
        "expression": "2+2"
    }
    assert result["tool_result"] == {"name": "calculator", "output": "4", "ok": True, "error": None}
    assert result["tool_call"]["id"] == call["tool_call"]["id"]
    assert answer["content"] == CALC_ANSWER and answer["id"] == turn["message_id"]
    assert answer["tool_call"] is None and answer["model_version"] == "fake-1"


async def test_conversation_defaults_to_the_default_agent(client: httpx.AsyncClient) -> None:
    agents = (await client.get("/api/v1/agents")).json()
    default = next(a for a in agents if a["name"] == "default")

    response = await client.post("/api/v1/conversations", json={"title": "hello"})

    assert response.json()["agent_id"] == default["id"]
    assert response.json()["title"] == "hello"


async def test_unknown_conversation_or_agent_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/conversations/nope")).status_code == 404
    posted = await client.post("/api/v1/conversations/nope/messages", json={"content": "hi"})
    assert posted.status_code == 404
    assert posted.json()["detail"] == "conversation nope not found"
    assert (await client.delete("/api/v1/conversations/nope")).status_code == 404
    assert (await client.post("/api/v1/conversations", json={"agent_id": "nope"})).status_code == 404


async def test_out_of_range_temperature_is_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/agents", json={"name": "hot", "temperature": 5})

    assert response.status_code == 422
    assert response.json()["field"] == "temperature"
    assert "temperature" in response.json()["detail"]


@pytest.mark.parametrize("content", ["", "   "])
async def test_empty_message_is_422_naming_the_field(client: httpx.AsyncClient, content: str) -> None:
    conversation_id = await new_conversation(client)

    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages", json={"content": content}
    )

    assert response.status_code == 422
    assert response.json()["field"] == "content"


async def test_malformed_json_is_a_clear_4xx(client: httpx.AsyncClient) -> None:
    conversation_id = await new_conversation(client)

    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        content=b'{"content": "hi"',
        headers={"content-type": "application/json"},
    )

    assert 400 <= response.status_code < 500
    assert "malformed JSON" in response.json()["detail"]


async def test_agents_accept_only_registered_tools(client: httpx.AsyncClient) -> None:
    bad = await client.post("/api/v1/agents", json={"name": "a", "allowed_tools": ["calculator", "teleport"]})
    assert bad.status_code == 422 and bad.json()["field"] == "allowed_tools"

    created = await client.post(
        "/api/v1/agents",
        json={"name": "maths", "allowed_tools": ["calculator"], "max_tokens": 64, "max_steps": 2},
    )
    assert created.status_code == 201, created.text
    agent = created.json()
    assert agent["allowed_tools"] == ["calculator"] and agent["max_tokens"] == 64 and agent["max_steps"] == 2
    assert (await client.post("/api/v1/agents", json={"name": "maths"})).status_code == 422
    assert {"default", "maths"} <= {a["name"] for a in (await client.get("/api/v1/agents")).json()}
    conversation = await client.post("/api/v1/conversations", json={"agent_id": agent["id"]})
    assert conversation.json()["agent_id"] == agent["id"]


async def test_conversations_paginate(client: httpx.AsyncClient) -> None:
    ids = [await new_conversation(client, title=f"c{i}") for i in range(5)]

    first = (await client.get("/api/v1/conversations", params={"limit": 2})).json()
    last = (await client.get("/api/v1/conversations", params={"limit": 2, "offset": 4})).json()

    assert first["total"] == 5 and first["limit"] == 2 and first["offset"] == 0
    assert len(first["items"]) == 2 and len(last["items"]) == 1
    seen = {item["id"] for item in first["items"] + last["items"]}
    assert seen <= set(ids)
    too_many = await client.get("/api/v1/conversations", params={"limit": 101})
    assert too_many.status_code == 422 and too_many.json()["field"] == "limit"


async def test_delete_conversation(client: httpx.AsyncClient) -> None:
    conversation_id = await new_conversation(client)

    response = await client.delete(f"/api/v1/conversations/{conversation_id}")

    assert response.status_code == 204 and response.content == b""
    assert (await client.get(f"/api/v1/conversations/{conversation_id}")).status_code == 404
    assert (await client.get("/api/v1/conversations")).json()["total"] == 0


async def test_tools_are_listed_with_their_schemas(client: httpx.AsyncClient) -> None:
    tools = {tool["name"]: tool for tool in (await client.get("/api/v1/tools")).json()}

    assert "expression" in tools["calculator"]["parameters"]["properties"]
    assert tools["calculator"]["description"]


async def test_engine_failure_is_503_with_retry_after(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script(InferenceError("backend crashed"))
    conversation_id = await new_conversation(client)

    response = await client.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "hi"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


async def test_oversized_prompt_is_413(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine(context_size=300))
    async with app.router.lifespan_context(app), admin_client(app) as client:
        conversation_id = await new_conversation(client)
        response = await client.post(
            f"/api/v1/conversations/{conversation_id}/messages", json={"content": "hi"}
        )
    assert response.status_code == 413
    assert response.json()["field"] == "messages"


async def test_unexpected_error_is_a_generic_500(app: FastAPI, engine: FakeEngine) -> None:
    # The engine has no scripted reply: it raises AssertionError, which nothing maps.
    async with admin_client(app, raise_app_exceptions=False) as client:
        conversation_id = await new_conversation(client)
        response = await client.post(
            f"/api/v1/conversations/{conversation_id}/messages", json={"content": "hi"}
        )

    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}

    response = await client.get("/health/ready")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["model"] == {"ok": True, "version": "fake-1", "path": None}
    assert body["checks"]["database"]["ok"] is True


async def test_openapi_docs(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()

    assert schema["info"]["title"] == "Gemma Agent Loop"
    assert "/v1/chat/completions" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200


# --- client disconnects -----------------------------------------------------------------------------------


async def call_then_disconnect(
    app: FastAPI, path: str, body: dict[str, Any], engine: FakeEngine, spec_version: str = "2.3"
) -> list[Any]:
    """Drive the raw ASGI app: send the body, then disconnect once generation has started.

    Like uvicorn, an ASGI 2.3 server drops what is sent after the disconnect; a 2.4 server fails the send.
    """
    sent: list[Any] = []
    gone = asyncio.Event()
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {await admin_key(app)}".encode()),
        ],
        "client": ("test", 1),
        "server": ("test", 80),
        "state": {},
    }
    messages = iter([{"type": "http.request", "body": payload, "more_body": False}])

    async def receive() -> dict[str, Any]:
        message = next(messages, None)
        if message is not None:
            return message
        while not engine.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        gone.set()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if gone.is_set() and spec_version >= "2.4":
            raise OSError("client disconnected")
        if not gone.is_set():
            sent.append(message)

    async def disconnect_anyway() -> None:
        # A 2.4 server does not call receive() during a stream; the client leaves all the same.
        while not engine.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        gone.set()

    watcher = asyncio.create_task(disconnect_anyway())
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    watcher.cancel()
    return sent


async def test_dropped_request_stops_the_turn(
    app: FastAPI, client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    conversation_id = await new_conversation(client)
    engine.delay_s = 0.02
    engine.script("word " * 200)

    sent = await call_then_disconnect(
        app, f"/api/v1/conversations/{conversation_id}/messages", {"content": "hi"}, engine
    )

    assert engine.abandoned == 1
    assert sent == []  # nothing was answered: the 499 went nowhere


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_dropped_stream_stops_generation(app: FastAPI, engine: FakeEngine, spec_version: str) -> None:
    engine.delay_s = 0.02
    engine.script("word " * 200)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    sent = await call_then_disconnect(app, "/v1/chat/completions", body, engine, spec_version)

    for _ in range(20):
        if engine.abandoned:
            break
        await asyncio.sleep(0.01)
    assert engine.abandoned == 1
    assert sent[0]["status"] == 200
    assert not any(b"[DONE]" in m.get("body", b"") for m in sent)


# --- OpenAI-compatible API --------------------------------------------------------------------------------


async def test_openai_chat_without_tools(oai: openai.AsyncOpenAI, engine: FakeEngine) -> None:
    engine.script("Hello there!")

    completion = await oai.chat.completions.create(
        model="anything",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        temperature=0.5,
        max_tokens=32,
        seed=7,
    )

    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "anything"
    choice = completion.choices[0]
    assert choice.message.content == "Hello there!" and choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    request = engine.requests[-1]
    assert request.constraint is None and request.temperature == 0.5 and request.seed == 7
    assert request.max_tokens == 32
    assert request.prompt.startswith("<start_of_turn>user\nBe terse.\n\nHi")


async def test_openai_tool_call_round_trip(oai: openai.AsyncOpenAI, engine: FakeEngine) -> None:
    engine.script(CALC_CALL, "It is 4.")
    messages: list[Any] = [{"role": "user", "content": "What is 2+2?"}]

    first = await oai.chat.completions.create(model="m", messages=messages, tools=[CALC_TOOL])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "2+2"}
    assert engine.requests[-1].constraint is not None and engine.requests[-1].constraint.allow_text

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "4"},
    ]
    second = await oai.chat.completions.create(model="m", messages=messages, tools=[CALC_TOOL])

    assert second.choices[0].message.content == "It is 4."
    assert '<tool_result name="calculator">\n4\n</tool_result>' in engine.requests[-1].prompt


async def test_openai_tool_choice_required(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script(CALC_CALL)
    body = {"model": "m", "messages": [{"role": "user", "content": "2+2"}], "tools": [CALC_TOOL]}

    response = await client.post("/v1/chat/completions", json={**body, "tool_choice": "required"})

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"
    constraint = engine.requests[-1].constraint
    assert constraint is not None and not constraint.allow_text


async def test_openai_stream_sends_chunks_then_done(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script("Streaming works fine.")
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") async for line in response.aiter_lines() if line]

    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Streaming works fine."
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_openai_stream_of_a_tool_call(oai: openai.AsyncOpenAI, engine: FakeEngine) -> None:
    engine.script(CALC_CALL)

    stream = await oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "2+2"}], tools=[CALC_TOOL], stream=True
    )
    chunks = [chunk async for chunk in stream]

    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0
    assert calls[0].function is not None and calls[0].function.name == "calculator"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks)


async def test_openai_length_and_stop(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.script("one two three four five six", "first line\nsecond line")
    base = {"model": "m", "messages": [{"role": "user", "content": "count"}]}

    cut = (await client.post("/v1/chat/completions", json={**base, "max_completion_tokens": 2})).json()
    stopped = (await client.post("/v1/chat/completions", json={**base, "stop": "\n"})).json()

    assert cut["choices"][0]["finish_reason"] == "length"
    assert stopped["choices"][0]["message"]["content"] == "first line"
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_openai_errors_use_openai_shape(oai: openai.AsyncOpenAI, client: httpx.AsyncClient) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert caught.value.param == "temperature"

    orphan = {"model": "m", "messages": [{"role": "tool", "tool_call_id": "call_x", "content": "4"}]}
    response = await client.post("/v1/chat/completions", json=orphan)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"

    bad_choice = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}
    assert (await client.post("/v1/chat/completions", json=bad_choice)).json()["error"][
        "param"
    ] == "tool_choice"

    malformed = await client.post(
        "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]["message"]


async def test_openai_context_overflow(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine(context_size=300))
    async with app.router.lifespan_context(app), admin_client(app) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}], "stream": True}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_openai_models(oai: openai.AsyncOpenAI) -> None:
    models = [model async for model in oai.models.list()]

    assert [(m.id, m.owned_by) for m in models] == [("fake-1", "agentloop")]


# --- WebSocket --------------------------------------------------------------------------------------------


@pytest.fixture
def ws_client(tmp_path: Path, engine: FakeEngine) -> Iterator[TestClient]:
    app = create_app(settings_for(tmp_path), engine=engine)
    with TestClient(app) as client:
        client.headers.update(bearer(client.portal.call(admin_key, app)))
        yield client


def receive_turn(websocket: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] not in ("final", "error"):
        events.append(websocket.receive_json())
    return events


def test_websocket_streams_a_turn(ws_client: TestClient, engine: FakeEngine) -> None:
    engine.script(CALC_CALL, CALC_ANSWER, "Hi again, friend.")
    conversation_id = ws_client.post("/api/v1/conversations", json={}).json()["id"]

    with ws_client.websocket_connect(f"/api/v1/conversations/{conversation_id}/ws") as websocket:
        websocket.send_json({"content": "2+2?"})
        events = receive_turn(websocket)
        websocket.send_text("and hello")
        second = receive_turn(websocket)

    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["tool_call", "tool_result"] and kinds[-1] == "final"
    assert set(kinds[2:-1]) == {"token"} and len(kinds) > 4
    call, result, final = events[0], events[1], events[-1]
    assert call["name"] == "calculator" and call["arguments"] == {"expression": "2+2"} and call["id"]
    assert result["name"] == "calculator" and result["output"] == "4" and result["ok"] is True
    assert "".join(e["text"] for e in events if e["type"] == "token") == CALC_ANSWER
    assert final["answer"] == CALC_ANSWER and final["model_version"] == "fake-1" and final["message_id"]
    assert final["steps"] == [
        {"name": "calculator", "arguments": {"expression": "2+2"}, "result": "4", "ok": True}
    ]
    assert final["usage"]["prompt_tokens"] > 0 and final["latency_ms"] >= 0
    assert second[-1]["type"] == "final" and second[-1]["answer"] == "Hi again, friend."
    messages = ws_client.get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user", "assistant"]


def test_websocket_bad_json_keeps_the_connection(ws_client: TestClient, engine: FakeEngine) -> None:
    engine.script("Still here.")
    conversation_id = ws_client.post("/api/v1/conversations", json={}).json()["id"]

    with ws_client.websocket_connect(f"/api/v1/conversations/{conversation_id}/ws") as websocket:
        websocket.send_text('{"content": ')
        error = websocket.receive_json()
        websocket.send_json({"content": "   "})
        empty = websocket.receive_json()
        websocket.send_json({"content": "are you there?"})
        events = receive_turn(websocket)

    assert error["type"] == "error" and 400 <= error["status"] < 500 and "JSON" in error["detail"]
    assert empty["type"] == "error" and empty["status"] == 422 and empty["field"] == "content"
    assert events[-1] == {**events[-1], "type": "final", "answer": "Still here."}


def test_websocket_unknown_conversation_closes_4404(ws_client: TestClient) -> None:
    with ws_client.websocket_connect("/api/v1/conversations/nope/ws") as websocket:
        error = websocket.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            websocket.receive_json()

    assert error == {"type": "error", "detail": "conversation nope not found", "status": 404}
    assert closed.value.code == 4404


def test_websocket_closes_4404_when_the_conversation_is_deleted(ws_client: TestClient) -> None:
    conversation_id = ws_client.post("/api/v1/conversations", json={}).json()["id"]

    with ws_client.websocket_connect(f"/api/v1/conversations/{conversation_id}/ws") as websocket:
        assert ws_client.delete(f"/api/v1/conversations/{conversation_id}").status_code == 204
        websocket.send_json({"content": "still there?"})
        error = websocket.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            websocket.receive_json()

    assert error["type"] == "error" and error["status"] == 404
    assert closed.value.code == 4404


def test_websocket_disconnect_stops_generation(ws_client: TestClient, engine: FakeEngine) -> None:
    engine.delay_s = 0.02
    engine.script("word " * 200)
    conversation_id = ws_client.post("/api/v1/conversations", json={}).json()["id"]

    with ws_client.websocket_connect(f"/api/v1/conversations/{conversation_id}/ws") as websocket:
        websocket.send_json({"content": "talk"})
        assert websocket.receive_json()["type"] == "token"

    for _ in range(100):
        if engine.abandoned:
            break
        ws_client.portal.call(asyncio.sleep, 0.02)  # type: ignore[union-attr]
    assert engine.abandoned == 1

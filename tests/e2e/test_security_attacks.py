"""The attack suite against the real app (bootstrap, SQLite, the real tools and sandbox; a scripted engine):
forged and stale tokens, refresh-token reuse, other users' data, role escalation, path traversal, sandbox
escapes, SSRF, oversized bodies and rate limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from agentloop.adapters.storage import create_engine, create_sessionmaker
from agentloop.adapters.storage.auth_repository import SqlAuthStore
from agentloop.adapters.tools.sandbox import bwrap_path
from agentloop.domain.auth import LOCAL_ADMIN, Role
from agentloop.entrypoints.api import create_app
from agentloop.settings import Settings
from auth_helpers import bearer, fast_auth
from fakes import FakeEngine

PASSWORD = "a long enough password"


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    values = {
        "python_timeout_s": 2.0,
        "python_memory_mb": 256,
        "fetch_allowed_hosts": ["127.0.0.1", "localhost", "169.254.169.254", "metadata.google.internal"],
        **fast_auth(),
        **extra,
    }
    return Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", _env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    engine: FakeEngine
    tokens: dict[str, dict[str, Any]]
    suffix: str

    def user(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def as_(self, name: str) -> dict[str, str]:
        return bearer(self.tokens[name]["access_token"])


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/token", json={"username": username, "password": password})


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FastAPI, FakeEngine]]:
    """One app for the module (a bootstrap costs seconds here); each test makes its own users."""
    engine = FakeEngine()
    # Logins are limited per address and every test logs in four times from the same one.
    settings = settings_for(
        tmp_path_factory.mktemp("attacks"),
        rate_limit_login="10000/minute",
        cors_origins=["https://app.example"],
    )
    settings.rate_limit_ip = "10000/minute"
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        yield app, engine


@pytest.fixture
async def world(shared: tuple[FastAPI, FakeEngine]) -> AsyncIterator[World]:
    app, engine = shared
    engine.replies.clear()
    auth = app.state.container.auth
    suffix = secrets.token_hex(4)
    names = {"alice": Role.USER, "bob": Role.USER, "tina": Role.TRAINER, "ada": Role.ADMIN}
    for name, role in names.items():
        await auth.create_user(f"{name}-{suffix}", role, PASSWORD)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
        tokens = {}
        for name in names:
            response = await login(client, f"{name}-{suffix}")
            assert response.status_code == 200, response.text
            tokens[name] = response.json()
        yield World(app, client, engine, tokens, suffix)


async def conversation_of(world: World, name: str) -> str:
    response = await world.client.post("/api/v1/conversations", json={}, headers=world.as_(name))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- tokens -------------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes = b"") -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return signing_input + "." + b64(signature)


def admin_claims(world: World, **changes: Any) -> dict[str, Any]:
    real = world.tokens["alice"]["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(real.split(".")[1] + "=="))
    return {**claims, "role": "admin", **changes}


async def test_the_api_needs_a_token(world: World) -> None:
    for method, path in (
        ("GET", "/api/v1/conversations"),
        ("POST", "/api/v1/conversations"),
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/tools"),
    ):
        response = await world.client.request(method, path, json={})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "missing bearer token" in response.json()["detail"]
    openai_style = await world.client.get("/v1/models")
    assert openai_style.status_code == 401
    assert openai_style.json()["error"]["type"] == "authentication_error"
    assert (await world.client.get("/health/live")).status_code == 200


async def test_me_names_the_caller(world: World) -> None:
    response = await world.client.get("/api/v1/auth/me", headers=world.as_("tina"))
    assert response.json() == {"username": world.user("tina"), "role": "trainer"}


async def test_bad_passwords_are_401_with_a_reason(world: World) -> None:
    for username, password in ((world.user("alice"), "wrong password!"), ("mallory", PASSWORD)):
        response = await login(world.client, username, password)
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid user name or password"


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        ("alg_none", "algorithm"),
        ("hs256_public_key", "algorithm"),
        ("expired", "expired"),
        ("wrong_issuer", "issuer"),
        ("wrong_audience", "audience"),
        ("tampered", "signature"),
        ("garbage", "invalid token"),
    ],
)
async def test_forged_and_stale_tokens_are_refused(world: World, forgery: str, reason: str) -> None:
    codec = world.app.state.container.auth.codec
    public_pem = codec.keys.public_pem()
    real = world.tokens["alice"]["access_token"]
    head, _, signature = real.split(".")
    tokens = {
        "alg_none": lambda: forge({"alg": "none", "typ": "JWT"}, admin_claims(world)),
        "hs256_public_key": lambda: forge({"alg": "HS256", "typ": "JWT"}, admin_claims(world), public_pem),
        "expired": lambda: codec.encode(admin_claims(world, role="user", exp=int(time.time()) - 60)),
        "wrong_issuer": lambda: codec.encode(admin_claims(world, iss="evil")),
        "wrong_audience": lambda: codec.encode(admin_claims(world, aud="another-service")),
        "tampered": lambda: f"{head}.{b64(json.dumps(admin_claims(world)).encode())}.{signature}",
        "garbage": lambda: "not-a-jwt",
    }
    response = await world.client.get("/api/v1/conversations", headers=bearer(tokens[forgery]()))
    assert response.status_code == 401
    assert reason in response.json()["detail"]


async def test_refresh_rotation_and_reuse_revokes_the_family(world: World) -> None:
    first = world.tokens["alice"]
    rotated = await world.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"] and second["expires_in"] == 1800
    assert (
        await world.client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    ).status_code == 200

    reuse = await world.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401 and "reuse" in reuse.json()["detail"]
    after = await world.client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    assert after.status_code == 401 and "revoked" in after.json()["detail"]
    again = await world.client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert again.status_code == 401


async def test_logout_revokes(world: World) -> None:
    bob = world.tokens["bob"]
    response = await world.client.post("/api/v1/auth/logout", json={"refresh_token": bob["refresh_token"]})
    assert response.status_code == 204
    assert (await world.client.get("/api/v1/auth/me", headers=world.as_("bob"))).status_code == 401


async def test_revocations_from_another_process_are_refused_at_once(world: World) -> None:
    """Verified credentials are cached (ADR-0011), yet a key revoked or a user disabled by the CLI (its own
    process and database connection) is refused on the very next request."""
    container = world.app.state.container
    key, plain = await container.auth.create_api_key("soon revoked", Role.USER, LOCAL_ADMIN)
    carol = await container.auth.create_user(world.user("carol"), Role.USER, PASSWORD)
    carol_token = (await login(world.client, carol.username)).json()["access_token"]
    for _ in range(2):  # the second time from the cache
        assert (await world.client.get("/api/v1/auth/me", headers=bearer(plain))).status_code == 200
        assert (await world.client.get("/api/v1/auth/me", headers=bearer(carol_token))).status_code == 200
    database = create_engine(container.settings.resolved_database_url)
    try:
        cli_store = SqlAuthStore(create_sessionmaker(database))
        await cli_store.revoke_api_key(key.id)
        refused = await world.client.get("/api/v1/auth/me", headers=bearer(plain))
        assert refused.status_code == 401 and "invalid API key" in refused.json()["detail"]
        assert (await world.client.get("/api/v1/auth/me", headers=bearer(carol_token))).status_code == 200
        await cli_store.set_disabled(carol.username, True)
        assert (await world.client.get("/api/v1/auth/me", headers=bearer(carol_token))).status_code == 401
    finally:
        await database.dispose()


# --- ownership and roles ------------------------------------------------------------------------------------


async def test_another_users_conversation_is_404(world: World) -> None:
    world.engine.script("Hello Alice.")
    mine = await conversation_of(world, "alice")
    turn = await world.client.post(
        f"/api/v1/conversations/{mine}/messages", json={"content": "hi"}, headers=world.as_("alice")
    )
    assert turn.status_code == 200, turn.text
    message_id = turn.json()["message_id"]
    bob = world.as_("bob")
    attempts = [
        await world.client.get(f"/api/v1/conversations/{mine}", headers=bob),
        await world.client.delete(f"/api/v1/conversations/{mine}", headers=bob),
        await world.client.post(f"/api/v1/conversations/{mine}/messages", json={"content": "x"}, headers=bob),
        await world.client.post(
            f"/api/v1/messages/{message_id}/feedback", json={"rating": "up"}, headers=bob
        ),
    ]
    assert [r.status_code for r in attempts] == [404, 404, 404, 404]
    unknown = await world.client.get("/api/v1/conversations/nope", headers=bob)
    assert (
        attempts[0].json()["detail"] == f"conversation {mine} not found"
    )  # same answer as for an unknown id
    assert unknown.status_code == 404
    listed = await world.client.get("/api/v1/conversations", headers=bob)
    assert listed.json()["total"] == 0  # bob sees none of the module's conversations
    # The owner and an admin still see it.
    assert (
        await world.client.get(f"/api/v1/conversations/{mine}", headers=world.as_("alice"))
    ).status_code == 200
    everything = await world.client.get("/api/v1/conversations?limit=100", headers=world.as_("ada"))
    assert mine in [c["id"] for c in everything.json()["items"]]
    feedback = await world.client.post(
        f"/api/v1/messages/{message_id}/feedback", json={"rating": "up"}, headers=world.as_("alice")
    )
    assert feedback.status_code == 201


async def test_a_user_cannot_call_trainer_or_admin_routes(world: World) -> None:
    trainer_routes = [
        ("GET", "/api/v1/models", None),
        ("POST", "/api/v1/models/base/promote", None),
        ("POST", "/api/v1/models/rollback", None),
        ("POST", "/api/v1/training/jobs", {}),
        ("GET", "/api/v1/training/jobs", None),
        ("GET", "/api/v1/training/jobs/x", None),
        ("POST", "/api/v1/training/jobs/x/cancel", None),
    ]
    admin_routes = [("POST", "/api/v1/agents", {"name": "evil", "system_prompt": "obey me"})]
    for method, path, body in trainer_routes + admin_routes:
        response = await world.client.request(method, path, json=body, headers=world.as_("alice"))
        assert response.status_code == 403, (path, response.text)
        assert "needs the" in response.json()["detail"]
    for method, path, body in admin_routes:
        response = await world.client.request(method, path, json=body, headers=world.as_("tina"))
        assert response.status_code == 403
    assert (await world.client.get("/api/v1/models", headers=world.as_("tina"))).status_code == 200
    created = await world.client.post(
        "/api/v1/agents", json={"name": world.user("ok")}, headers=world.as_("ada")
    )
    assert created.status_code == 201


async def test_api_keys_work_on_the_openai_endpoints(world: World) -> None:
    auth = world.app.state.container.auth
    alice = await auth.store.get_user_by_name(world.user("alice"))
    _, key = await auth.create_api_key("svc", Role.USER, alice.principal)
    world.engine.script("Hi.")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    response = await world.client.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    refused = await world.client.post("/v1/chat/completions", json=body, headers=bearer("alk_forged"))
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"


# --- tools: path traversal, sandbox escapes, SSRF ----------------------------------------------------------


async def tool_result(world: World, name: str, arguments: dict[str, Any]) -> str:
    """Have the agent call a tool (the engine is scripted to), and return what the tool answered."""
    call = json.dumps({"name": name, "arguments": arguments})
    world.engine.script(f"<tool_call>{call}</tool_call>", "Done.")
    conversation = await conversation_of(world, "alice")
    response = await world.client.post(
        f"/api/v1/conversations/{conversation}/messages", json={"content": "go"}, headers=world.as_("alice")
    )
    assert response.status_code == 200, response.text
    steps = response.json()["steps"]
    assert [step["name"] for step in steps] == [name]
    return str(steps[0]["result"])


@pytest.mark.parametrize(
    "path", ["../../../../etc/passwd", "/etc/passwd", "a/../../x", "..%2F..%2Fetc%2Fpasswd"]
)
async def test_file_tools_refuse_traversal(world: World, path: str) -> None:
    result = await tool_result(world, "read_file", {"path": path})
    assert "root:" not in result
    assert any(word in result for word in ("not allowed", "leaves the workspace", "no such file"))


async def test_file_tools_refuse_a_symlink_out_of_the_workspace(world: World, tmp_path: Path) -> None:
    conversation = await conversation_of(world, "alice")
    workspace = world.app.state.container.settings.workspace_dir / conversation
    workspace.mkdir(parents=True)
    (workspace / "escape").symlink_to("/etc")
    (workspace / "passwd").symlink_to("/etc/passwd")
    for path in ("escape/passwd", "passwd"):
        call = json.dumps({"name": "read_file", "arguments": {"path": path}})
        world.engine.script(f"<tool_call>{call}</tool_call>", "Done.")
        response = await world.client.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"content": "go"},
            headers=world.as_("alice"),
        )
        result = response.json()["steps"][0]["result"]
        assert "leaves the workspace" in result and "root:" not in result


needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not installed")


@needs_bwrap
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("print(open('/etc/passwd').read())", "No such file or directory: '/etc/passwd'"),
        ("import os; print(os.listdir('/'))", "'workspace'"),
        (
            "import socket; socket.create_connection(('1.1.1.1', 80), timeout=2); print('CONNECTED')",
            "Network is unreachable",
        ),
        ("import os\nwhile True:\n    os.fork()", "Resource temporarily unavailable"),
        ("b = bytearray(4 * 1024 ** 3)\nprint(len(b))", "MemoryError"),
        ("open('big', 'wb').write(b'x' * (50 << 20))", "File too large"),
        ("open('/usr/evil', 'w')", "Read-only file system"),
    ],
    ids=["read-passwd", "sees-little", "socket", "fork-bomb", "memory-bomb", "file-size", "write-outside"],
)
async def test_sandbox_escapes_fail(world: World, code: str, expected: str) -> None:
    result = await tool_result(world, "python", {"code": code})
    assert expected in result, result
    assert "root:x:0:0" not in result and "CONNECTED" not in result
    assert ".venv" not in result and "home" not in result.split("[stderr]")[0]


@needs_bwrap
async def test_sandbox_infinite_loop_times_out(world: World) -> None:
    started = time.monotonic()
    result = await tool_result(world, "python", {"code": "while True:\n    pass"})
    assert "timed out after 2s" in result
    assert time.monotonic() - started < 10


@needs_bwrap
async def test_sandbox_cannot_reach_the_server_on_loopback(world: World) -> None:
    code = "import socket; socket.create_connection(('127.0.0.1', 8000), timeout=2); print('CONNECTED')"
    result = await tool_result(world, "python", {"code": code})
    assert "CONNECTED" not in result and "Connection refused" in result


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/api/v1/conversations",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/",
        "http://[::ffff:127.0.0.1]/",
        "http://metadata.google.internal/",
    ],
)
async def test_fetch_url_refuses_internal_addresses(world: World, url: str) -> None:
    result = await tool_result(world, "fetch_url", {"url": url})
    assert any(
        words in result
        for words in ("private or reserved address", "not allow-listed", "cannot resolve host")
    ), result


# --- limits, headers, CORS ----------------------------------------------------------------------------------


async def test_oversized_bodies_are_413(world: World) -> None:
    # 1_000_000 bytes is the default max_body_bytes.
    huge = {"content": "x" * 1_100_000}
    response = await world.client.post("/api/v1/conversations", json=huge, headers=world.as_("alice"))
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"x" * 100_000

    chunked = await world.client.post(
        "/v1/chat/completions",
        content=chunks(),
        headers={**world.as_("alice"), "content-type": "application/json"},
    )
    assert chunked.status_code == 413


async def test_message_and_tool_limits(world: World) -> None:
    conversation = await conversation_of(world, "alice")
    too_long = await world.client.post(
        f"/api/v1/conversations/{conversation}/messages",
        json={"content": "x" * 16001},
        headers=world.as_("alice"),
    )
    assert too_long.status_code == 422 and "limit" in too_long.json()["detail"]
    tool = {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [tool] * 33}
    many = await world.client.post("/v1/chat/completions", json=body, headers=world.as_("alice"))
    assert many.status_code == 400 and "33 tools" in many.json()["error"]["message"]


async def test_security_headers(world: World) -> None:
    response = await world.client.get("/health/live")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    denied = await world.client.get("/api/v1/conversations")
    assert denied.headers["x-content-type-options"] == "nosniff"


async def test_rate_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    # Windows of a day on the real clock, here and below: the sliding-window counter (ADR-0006) weighs the
    # previous window, so a test that crossed a minute boundary would find some earlier requests forgotten.
    settings = settings_for(tmp_path, rate_limit_user="3/day", rate_limit_login="2/day")
    app = create_app(settings, engine=FakeEngine())
    async with app.router.lifespan_context(app):
        await app.state.container.auth.create_user("alice", Role.USER, PASSWORD)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            token = (await login(client, "alice")).json()["access_token"]
            codes = [
                (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code for _ in range(4)
            ]
            assert codes == [200, 200, 200, 429]
            limited = await client.get("/api/v1/auth/me", headers=bearer(token))
            assert 1 <= int(limited.headers["retry-after"]) <= 86_400
            assert "rate limit" in limited.json()["detail"]
            # One more login fits the login limit (2/day); the next one is refused.
            assert (await login(client, "alice")).status_code == 200
            assert (await login(client, "alice", "guessing password")).status_code == 429


async def test_per_ip_rate_limit(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, rate_limit_ip="5/day"), engine=FakeEngine())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            codes = [(await client.get("/api/v1/tools")).status_code for _ in range(6)]
            assert codes == [401] * 5 + [429]
            assert (await client.get("/health/live")).status_code == 200  # probes are never limited
        other = httpx.ASGITransport(app, client=("10.0.0.9", 4000))
        async with httpx.AsyncClient(transport=other, base_url="http://test") as client:
            assert (await client.get("/api/v1/tools")).status_code == 401


async def test_cors_allows_only_configured_origins(world: World) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    path = "/api/v1/conversations"
    allowed = await world.client.options(path, headers={"origin": "https://app.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    refused = await world.client.options(path, headers={"origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers


async def test_auth_off_serves_loopback_clients_only(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, auth_enabled=False), engine=FakeEngine())
    async with app.router.lifespan_context(app):
        local = httpx.ASGITransport(app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=local, base_url="http://test") as client:
            assert (await client.get("/api/v1/auth/me")).json() == {"username": "local", "role": "admin"}
        remote = httpx.ASGITransport(app, client=("192.0.2.7", 5000))
        async with httpx.AsyncClient(transport=remote, base_url="http://test") as client:
            response = await client.get("/api/v1/auth/me")
            assert response.status_code == 401 and "loopback" in response.json()["detail"]


# --- WebSocket ----------------------------------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(settings_for(tmp_path, rate_limit_user="6/day"), engine=FakeEngine(["Hello."] * 10))
    with TestClient(app) as client:
        auth = app.state.container.auth
        tokens = {}
        for name in ("alice", "bob"):
            client.portal.call(auth.create_user, name, Role.USER, PASSWORD)
            tokens[name] = client.post(
                "/api/v1/auth/token", json={"username": name, "password": PASSWORD}
            ).json()["access_token"]
        yield client, tokens


def test_websocket_needs_a_valid_token(ws: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = ws
    conversation = client.post("/api/v1/conversations", json={}, headers=bearer(tokens["alice"])).json()["id"]
    for query in ("", "?access_token=forged"):
        with client.websocket_connect(f"/api/v1/conversations/{conversation}/ws{query}") as socket:
            event = socket.receive_json()
            assert event["type"] == "error" and event["status"] == 401
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_json()
            assert closed.value.code == 1008
    with client.websocket_connect(
        f"/api/v1/conversations/{conversation}/ws?access_token={tokens['bob']}"
    ) as socket:
        assert socket.receive_json()["status"] == 404
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
        assert closed.value.code == 4404
    with client.websocket_connect(
        f"/api/v1/conversations/{conversation}/ws?access_token={tokens['alice']}"
    ) as socket:
        socket.send_json({"content": "hi"})
        events = []
        while not events or events[-1]["type"] not in ("final", "error"):
            events.append(socket.receive_json())
        assert events[-1]["type"] == "final" and events[-1]["answer"] == "Hello."
    # Every message counts against the per-user limit (6 a day: 3 used above, 3 more fit).
    with client.websocket_connect(
        f"/api/v1/conversations/{conversation}/ws?access_token={tokens['alice']}"
    ) as socket:
        statuses = []
        for _ in range(3):
            socket.send_json({"content": "again"})
            events = [socket.receive_json()]
            while events[-1]["type"] not in ("final", "error"):
                events.append(socket.receive_json())
            statuses.append(events[-1].get("status", 200))
        assert statuses == [200, 200, 429], statuses

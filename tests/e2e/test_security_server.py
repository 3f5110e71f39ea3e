"""Attacks from outside: `agentloop serve` as a subprocess on a real socket, users and keys made with the
CLI as an operator would, then plain HTTP and WebSocket clients trying their luck."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server_process import Server, admin_key_for, agentloop_command, free_port, process_env, run_cli
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cache_dir(model_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(model_settings(tmp_path_factory.getbasetemp()).cache_dir)


@pytest.fixture(scope="module")
def server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("secured") / "data"
    port = free_port()
    log = data_dir.parent / "server.log"
    # A day's window, not a minute's: the sliding-window counter (ADR-0006) weighs the previous window, so
    # a test that crossed a minute boundary on the real clock would find some of its earlier logins forgotten.
    env = {**process_env(data_dir, cache_dir), "AGENTLOOP_RATE_LIMIT_LOGIN": "5/day"}
    env["AGENTLOOP_EMBEDDED_WORKER"] = "false"
    command = [*agentloop_command(), "--data-dir", str(data_dir), "serve", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, cwd=data_dir.parent, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process, port, data_dir, log)
    try:
        server.wait_ready()
        server.key = admin_key_for(data_dir, cache_dir)
        yield server
    finally:
        server.stop()


def test_no_or_forged_token_is_401(server: Server) -> None:
    assert httpx.get(f"{server.url}/api/v1/conversations").status_code == 401
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    claims = {"sub": "x", "role": "admin", "iss": "agentloop", "aud": "agentloop-api", "exp": 2**31}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = httpx.get(
        f"{server.url}/api/v1/conversations", headers={"Authorization": f"Bearer {header}.{body}."}
    )
    assert forged.status_code == 401 and "algorithm" in forged.json()["detail"]
    live = httpx.get(f"{server.url}/health/live")
    assert live.status_code == 200 and live.headers["x-frame-options"] == "DENY"


def test_newcomer_token_in_one_step_roles_refresh_reuse_and_login_limit(
    server: Server, cache_dir: Path
) -> None:
    made = run_cli(server.data_dir, cache_dir, "users", "create", "bob", "--role", "user", "--token")
    assert made.returncode == 0, made.stderr
    password = made.stderr.split("password (shown once):")[1].split()[0]
    bob = {"Authorization": f"Bearer {made.stdout.strip()}"}
    assert httpx.get(f"{server.url}/api/v1/auth/me", headers=bob).json() == {
        "username": "bob",
        "role": "user",
    }
    assert httpx.get(f"{server.url}/api/v1/models", headers=bob).status_code == 403
    theirs = httpx.post(f"{server.url}/api/v1/conversations", json={}, headers=server.headers).json()["id"]
    assert httpx.get(f"{server.url}/api/v1/conversations/{theirs}", headers=bob).status_code == 404
    mine = httpx.post(f"{server.url}/api/v1/conversations", json={}, headers=bob).json()["id"]
    assert httpx.get(f"{server.url}/api/v1/conversations/{mine}", headers=bob).status_code == 200

    credentials = {"username": "bob", "password": password}
    first = httpx.post(f"{server.url}/api/v1/auth/token", json=credentials).json()
    second = httpx.post(f"{server.url}/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    reuse = httpx.post(f"{server.url}/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    fresh = {"Authorization": f"Bearer {second.json()['access_token']}"}
    assert httpx.get(f"{server.url}/api/v1/auth/me", headers=fresh).status_code == 401
    # The server allows 5 logins or refreshes a day per address; 3 were made above.
    codes = [httpx.post(f"{server.url}/api/v1/auth/token", json=credentials).status_code for _ in range(3)]
    assert codes == [200, 200, 429], codes
    limited = httpx.post(f"{server.url}/api/v1/auth/token", json=credentials)
    assert int(limited.headers["retry-after"]) >= 1


def test_oversized_bodies_are_413(server: Server) -> None:
    url = f"{server.url}/api/v1/conversations"
    big = httpx.post(url, content=b"{" + b" " * 2_000_000 + b"}", headers=server.headers)
    assert big.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b" " * 100_000

    chunked = httpx.post(
        url, content=chunks(), headers={**server.headers, "content-type": "application/json"}
    )
    assert chunked.status_code == 413


def test_websocket_without_a_token_is_closed_1008(server: Server) -> None:
    conversation = httpx.post(f"{server.url}/api/v1/conversations", json={}, headers=server.headers).json()[
        "id"
    ]
    with connect(
        f"ws://127.0.0.1:{server.port}/api/v1/conversations/{conversation}/ws", open_timeout=10
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["status"] == 401
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

"""The real thing from outside: `agentloop serve` as a subprocess with the real model and SQLite, driven by
the official OpenAI client, a WebSocket client, plain HTTP and the `agentloop ask` CLI in another process.

Each server's output goes to a log file in its temporary directory; failures quote its tail.

The native turns use agents made through the API with only the tools they need: a calculator-only agent's
prompt is ~300 tokens where the default agent's (all tools) is ~1,100, and every new process (the CLI, a
restarted server) prefills its prompt from scratch. The default agent's full turn is covered in-process
(tests/integration/test_agent_real_model.py) and through the web page (test_web_browser.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from websockets.sync.client import connect

from agentloop.settings import Settings
from conftest import MODEL_THREADS

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
TURN_TIMEOUT_S = 480.0  # a 2-core machine busy with other work slows a turn from ~10 s to minutes

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        },
    },
}


def agentloop_command() -> list[str]:
    """The installed console script beside this interpreter (what a user runs)."""
    script = Path(sys.executable).with_name("agentloop")
    if script.exists():
        return [str(script)]
    found = shutil.which("agentloop")
    assert found, "the agentloop console script is not installed"
    return [found]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_env(data_dir: Path, cache_dir: Path) -> dict[str, str]:
    """The caller's environment without its AGENTLOOP_* settings, pointed at `data_dir`, on the tests' number
    of model threads (MODEL_THREADS in tests/conftest.py)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENTLOOP_")}
    env.update(
        AGENTLOOP_DATA_DIR=str(data_dir),
        AGENTLOOP_CACHE_DIR=str(cache_dir),
        AGENTLOOP_N_THREADS=str(MODEL_THREADS),
    )
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path
    key: str = ""  # an admin API key, made with `agentloop api-keys create` on the server's data dir

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- server log {self.log} ---\n{text[-chars:]}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode} on start\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not ready after {READY_TIMEOUT_S:.0f} s\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, as a process manager would; kill it if it does not stop in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"server ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s\n{self.log_tail()}")
        return self.process.returncode


def assert_clean_exit(server: Server, code: int) -> None:
    """A graceful shutdown; uvicorn re-raises the SIGTERM it handled afterwards, so -SIGTERM counts too."""
    log = server.log.read_text(errors="replace")
    assert code in (0, -signal.SIGTERM), f"exit code {code}\n{server.log_tail()}"
    assert "Application shutdown complete" in log, server.log_tail()
    assert "Traceback" not in log and "ERROR" not in log, server.log_tail()


def start_server(data_dir: Path, cache_dir: Path, name: str = "server") -> Server:
    port = free_port()
    log = data_dir.parent / f"{name}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *agentloop_command(),
                "--data-dir",
                str(data_dir),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            # No training worker beside these servers (one process less to start on 2 cores): the worker
            # is exercised by test_web_browser.py and test_replicas.py.
            env=process_env(data_dir, cache_dir) | {"AGENTLOOP_EMBEDDED_WORKER": "false"},
            cwd=data_dir.parent,  # no developer .env file is picked up
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, data_dir, log)
    try:
        server.wait_ready()
        server.key = admin_key_for(data_dir, cache_dir)
    except BaseException:
        server.stop()
        raise
    return server


def run_cli(data_dir: Path, cache_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agentloop_command(), "--data-dir", str(data_dir), *args],
        env=process_env(data_dir, cache_dir),
        cwd=data_dir.parent,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


_KEYS: dict[Path, str] = {}


def admin_key_for(data_dir: Path, cache_dir: Path) -> str:
    """One admin API key per data dir, made by the CLI as an operator would."""
    if data_dir not in _KEYS:
        done = run_cli(data_dir, cache_dir, "api-keys", "create", "e2e", "--role", "admin")
        assert done.returncode == 0, done.stderr
        _KEYS[data_dir] = done.stdout.strip()
    return _KEYS[data_dir]


@pytest.fixture(scope="module")
def cache_dir(model_settings: Callable[[Path], Settings], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared model cache: `model_settings` also makes sure the GGUF is assembled there."""
    return model_settings(tmp_path_factory.getbasetemp()).cache_dir


@pytest.fixture
def launch(cache_dir: Path) -> Iterator[Callable[[Path], Server]]:
    """Start servers on data dirs; every one is stopped (killed if need be) after the test."""
    started: list[Server] = []

    def launch(data_dir: Path) -> Server:
        started.append(start_server(data_dir, cache_dir, f"server{len(started)}"))
        return started[-1]

    yield launch
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by the tests that only talk to it (the model loads in ~2 s, turns take longer)."""
    server = start_server(tmp_path_factory.mktemp("served") / "data", cache_dir)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def oai(server: Server) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, timeout=TURN_TIMEOUT_S
    ) as client:
        yield client


def new_agent(server: Server, name: str, tools: list[str], max_tokens: int) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/agents",
        json={"name": name, "allowed_tools": tools, "max_tokens": max_tokens},
        headers=server.headers,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def new_conversation(server: Server, title: str, agent_id: str | None = None) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/conversations",
        json={"title": title, "agent_id": agent_id},
        headers=server.headers,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def calculator_agent(server: Server) -> str:
    """An agent with the calculator only (a ~300-token prompt) and replies capped at 48 tokens."""
    return new_agent(server, "calculator", ["calculator"], 48)


def get_conversation(server: Server, conversation_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{server.url}/api/v1/conversations/{conversation_id}", headers=server.headers, timeout=10
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- OpenAI-compatible /v1 ----------------------------------------------------------------------------------


def test_openai_client_gets_a_valid_required_tool_call(oai: OpenAI, server: Server) -> None:
    response = oai.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=64,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", f"{choice.message.content!r}\n{server.log_tail()}"
    assert choice.message.tool_calls, choice.message
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict) and isinstance(arguments.get("city"), str), arguments
    assert response.usage is not None and response.usage.completion_tokens > 0


def test_openai_client_gets_plain_text_without_tools(oai: OpenAI) -> None:
    response = oai.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None and 0 < response.usage.completion_tokens <= 16


def test_openai_client_streams_chunks_and_a_finish_reason(oai: OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len([d for d in deltas if d]) >= 2, deltas
    assert "".join(deltas).strip()
    assert finishes in (["stop"], ["length"])
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


# --- native API: WebSocket, and the CLI beside the server ---------------------------------------------------


def test_websocket_turn_streams_the_calculator_step_and_the_answer(
    server: Server, calculator_agent: str
) -> None:
    conversation_id = new_conversation(server, "websocket", calculator_agent)
    url = f"ws://127.0.0.1:{server.port}/api/v1/conversations/{conversation_id}/ws?access_token={server.key}"
    events: list[dict[str, Any]] = []
    with connect(url, open_timeout=10) as socket_:
        socket_.send(json.dumps({"content": "What is 12*7?"}))
        while not events or events[-1]["type"] not in ("final", "error"):
            events.append(json.loads(socket_.recv(timeout=TURN_TIMEOUT_S)))
    kinds = [event["type"] for event in events]
    assert kinds[-1] == "final", f"{events}\n{server.log_tail()}"
    call = next(event for event in events if event["type"] == "tool_call")
    result = next(event for event in events if event["type"] == "tool_result")
    assert kinds.index("tool_call") < kinds.index("tool_result")
    assert call["name"] == "calculator" and "expression" in call["arguments"]
    assert (result["id"], result["name"], result["ok"]) == (call["id"], "calculator", True)
    assert result["output"] == "84"
    assert "84" in events[-1]["answer"]
    assert events[-1]["steps"][0]["result"] == "84"

    stored = get_conversation(server, conversation_id)["messages"]
    assert [m["role"] for m in stored[:3]] == ["user", "assistant", "tool"]
    assert stored[-1]["id"] == events[-1]["message_id"]


def test_cli_ask_runs_beside_the_server_on_the_same_data_dir(
    server: Server, cache_dir: Path, calculator_agent: str
) -> None:
    """The CLI continues (`-c`) a conversation the server made, with the server's calculator agent; that a
    conversation the CLI starts is stored with source "cli" is checked in tests/e2e/test_cli_inprocess.py."""
    conversation_id = new_conversation(server, "cli", calculator_agent)
    done = subprocess.run(
        [
            *agentloop_command(),
            "--data-dir",
            str(server.data_dir),
            "ask",
            "What is 1234 * 5678?",
            "--json",
            "-c",
            conversation_id,
        ],
        env=process_env(server.data_dir, cache_dir),
        cwd=server.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    turn = json.loads(done.stdout)
    assert turn["steps"] and turn["steps"][0]["name"] == "calculator", turn
    assert turn["steps"][0]["result"] == "7006652"
    assert "7006652" in turn["answer"]
    # The CLI wrote to the database the server uses; the server reads it back.
    assert turn["conversation_id"] == conversation_id
    stored = get_conversation(server, conversation_id)
    assert stored["messages"][-1]["id"] == turn["message_id"]
    assert stored["agent_id"] == calculator_agent


# --- restart ------------------------------------------------------------------------------------------------


def test_conversations_survive_a_server_restart(launch: Callable[[Path], Server], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = launch(data_dir)
    # An agent without tools and with replies of a few tokens: the cheapest full turn.
    conversation_id = new_conversation(first, "restart", new_agent(first, "short", [], 8))
    response = httpx.post(
        f"{first.url}/api/v1/conversations/{conversation_id}/messages",
        json={"content": "Hi! Who are you?"},
        headers=first.headers,
        timeout=TURN_TIMEOUT_S,
    )
    assert response.status_code == 200, f"{response.text}\n{first.log_tail()}"
    before = get_conversation(first, conversation_id)
    assert before["messages"][0]["role"] == "user"
    assert before["messages"][-1]["id"] == response.json()["message_id"]

    assert_clean_exit(first, first.stop())

    second = launch(data_dir)
    after = get_conversation(second, conversation_id)
    assert after["title"] == "restart"
    assert after["messages"] == before["messages"]
    listed = httpx.get(f"{second.url}/api/v1/conversations", headers=second.headers, timeout=10).json()
    assert [c["id"] for c in listed["items"]] == [conversation_id]


def test_each_request_is_logged_once_by_the_app(server: Server) -> None:
    """`agentloop serve` turns uvicorn's access log off because the app logs every request itself (with its
    request id, route and duration); the app's logging setup must not switch uvicorn's back on."""
    request_id = "log-once-" + uuid.uuid4().hex
    response = httpx.get(
        f"{server.url}/api/v1/agents", headers={**server.headers, "X-Request-ID": request_id}, timeout=10
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while request_id not in server.log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in server.log.read_text(errors="replace").splitlines() if request_id in line]
    assert len(lines) == 1, lines
    assert "agentloop.http" in lines[0] and "endpoint=/api/v1/agents" in lines[0] and "status=200" in lines[0]

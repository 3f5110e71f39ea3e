"""Real server processes for the HTTP benchmarks: ours (`agentloop serve`) and llama.cpp's
(`python -m llama_cpp.server`), each on a free local port, with their memory read from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import CACHE_DIR, N_BATCH, N_CTX, N_THREADS

READY_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MB."""
    values: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
    except OSError:
        pass
    return {"rss_mb": values.get("VmRSS", 0.0), "peak_rss_mb": values.get("VmHWM", 0.0)}


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    ready_path: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Any = None
    startup_s: float = 0.0
    # Ours needs a caller (auth is on by default): an admin API key made with the CLI before it starts.
    data_dir: Path | None = None
    api_key: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        started = time.perf_counter()
        if self.data_dir is not None and not self.api_key:
            self.api_key = make_api_key(self.data_dir, self.env)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [*self.command, "--host", "127.0.0.1", "--port", str(self.port)],
            # No inherited AGENTLOOP_* variables and no .env file (cwd): only the settings given here count.
            env={**{k: v for k, v in os.environ.items() if not k.startswith("AGENTLOOP_")}, **self.env},
            cwd=tempfile.gettempdir(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited ({self.process.returncode}): {self.output()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2.0).status_code == 200:
                    self.startup_s = time.perf_counter() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} server was not ready within {READY_TIMEOUT_S:.0f} s")

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def memory(self) -> dict[str, float]:
        return proc_memory_mb(self.process.pid) if self.process else {"rss_mb": 0.0, "peak_rss_mb": 0.0}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.log = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ours(data_dir: Path, **settings: Any) -> Server:
    """`agentloop serve` with the benchmark's engine settings, no training worker, its own data dir."""
    env = {
        "AGENTLOOP_CACHE_DIR": str(CACHE_DIR),
        "AGENTLOOP_N_CTX": str(N_CTX),
        "AGENTLOOP_N_THREADS": str(N_THREADS),
        "AGENTLOOP_N_BATCH": str(N_BATCH),
        "AGENTLOOP_EMBEDDED_WORKER": "false",
        # The load generators are one client on one address: the per-user and per-IP rate limits (which would
        # answer 429 within seconds) are lifted; authentication stays on and is part of what is measured.
        "AGENTLOOP_RATE_LIMIT_USER": "100000000/minute",
        "AGENTLOOP_RATE_LIMIT_IP": "100000000/minute",
        **{f"AGENTLOOP_{key.upper()}": str(value) for key, value in settings.items()},
    }
    command = [sys.executable, "-m", "agentloop", "--data-dir", str(data_dir), "serve"]
    return Server("agentloop", command, env, "/health/ready", data_dir=data_dir)


def make_api_key(data_dir: Path, env: dict[str, str]) -> str:
    """Migrate `data_dir`'s database and make an admin API key there, as an operator would."""
    clean = {**{k: v for k, v in os.environ.items() if not k.startswith("AGENTLOOP_")}, **env}
    base = [sys.executable, "-m", "agentloop", "--data-dir", str(data_dir)]
    subprocess.run([*base, "db", "upgrade"], env=clean, capture_output=True, check=True, timeout=120)
    made = subprocess.run(
        [*base, "api-keys", "create", "bench", "--role", "admin"],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return made.stdout.strip()


class ServerAuth(httpx.Auth):
    """Sends each request the API key of the server (by port) it goes to; llama.cpp's server needs none."""

    def __init__(self, *servers: Server) -> None:
        self.keys = {server.port: server.api_key for server in servers}

    def auth_flow(self, request: httpx.Request) -> Any:
        key = self.keys.get(request.url.port or 0)
        if key:
            request.headers["Authorization"] = f"Bearer {key}"
        yield request


def llama_cpp_server(model: Path) -> Server:
    """llama-cpp-python's own OpenAI-compatible server on the same GGUF and engine settings."""
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--n_ctx",
        str(N_CTX),
        "--n_threads",
        str(N_THREADS),
        "--n_threads_batch",
        str(N_THREADS),
        "--n_batch",
        str(N_BATCH),
        "--chat_format",
        "gemma",
        "--verbose",
        "false",
    ]
    return Server("llama_cpp.server", command, {}, "/v1/models")

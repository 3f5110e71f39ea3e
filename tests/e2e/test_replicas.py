"""Horizontal scale: two `agentloop serve` processes and one `agentloop worker` on one PostgreSQL (a throwaway
database on 127.0.0.1:5432) and one Redis (owned by this test), each replica with the real model.

Checked: a conversation moves between replicas turn by turn (no in-process state, the shared Redis cache
stays consistent); a version promoted through one replica is served by the other; a training job queued
through one replica is taken by the worker process and its outcome is visible on the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest

from agentloop.adapters.model_files import ModelFile
from agentloop.adapters.storage import create_engine, create_sessionmaker, upgrade
from agentloop.adapters.storage.learning_repository import SqlLearningStore
from agentloop.domain.learning import BASE_VERSION, ModelVersion
from auth_helpers import bearer, key_file
from conftest import model_cache_dir, postgres_database
from services import OwnedRedis, free_port, wait_for_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.model]

START_TIMEOUT_S = 120


def zero_lora(path: Path) -> str:
    """A real GGUF LoRA adapter for the bundled Gemma (one rank-2 pair on block 0's query projection, all
    zeros, so answers stay the base model's); returns its sha256."""
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 2.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((2, 640), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((1024, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.processes: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.key = ""  # an admin API key, made with `agentloop api-keys create` before the replicas start

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "agentloop", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def replicas(self, *names: str) -> None:
        """Start API processes side by side, then wait until each listens."""
        started = []
        for name in names:
            port = free_port()
            started.append((port, self.spawn(name, "serve", "--host", "127.0.0.1", "--port", str(port))))
        for port, process in started:
            wait_for_port(port, START_TIMEOUT_S, process)
            self.urls.append(f"http://127.0.0.1:{port}")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with postgres_database() as url:
        await asyncio.to_thread(upgrade, url)  # once, like the compose file's `migrate` service
        yield url


@pytest.fixture
def cluster(database: str, tmp_path: Path, model_file: ModelFile) -> Iterator[Cluster]:
    redis_server = OwnedRedis(tmp_path)
    redis_server.start()
    env = os.environ | {
        "AGENTLOOP_DATABASE_URL": database,
        "AGENTLOOP_REDIS_URL": redis_server.url,
        "AGENTLOOP_DATA_DIR": str(tmp_path / "shared-data"),
        "AGENTLOOP_CACHE_DIR": str(model_cache_dir()),
        "AGENTLOOP_AUTO_MIGRATE": "false",
        "AGENTLOOP_EMBEDDED_WORKER": "false",
        "AGENTLOOP_VERSION_POLL_S": "0.5",
        "AGENTLOOP_N_CTX": "1024",
        "AGENTLOOP_N_THREADS": "1",
        "AGENTLOOP_LOG_LEVEL": "WARNING",
        # Replicas sign and check tokens with one key, as a deployment mounts it into every API container.
        "AGENTLOOP_JWT_PRIVATE_KEY_FILE": str(key_file()),
    }
    cluster = Cluster(env, tmp_path)
    try:
        made = subprocess.run(
            [sys.executable, "-m", "agentloop", "api-keys", "create", "replicas", "--role", "admin"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        cluster.key = made.stdout.strip()
        cluster.spawn("worker", "worker")
        cluster.replicas("api-1", "api-2")
        yield cluster
    finally:
        cluster.stop()
        redis_server.kill()


async def until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_two_replicas_and_a_worker_share_one_database_and_redis(
    cluster: Cluster, database: str, model_file: ModelFile, tmp_path: Path
) -> None:
    a, b = (httpx.AsyncClient(base_url=url, timeout=120, headers=bearer(cluster.key)) for url in cluster.urls)
    async with a, b:
        for replica in (a, b):
            ready = (await replica.get("/health/ready")).json()
            assert ready["checks"]["database"]["ok"] and ready["checks"]["cache"]["ok"]

        # One conversation, turns alternating between the replicas.
        agent = (
            await a.post("/api/v1/agents", json={"name": "short", "allowed_tools": [], "max_tokens": 4})
        ).json()
        conversation = (await a.post("/api/v1/conversations", json={"agent_id": agent["id"]})).json()["id"]
        for replica, text in ((b, "Hello"), (a, "And again"), (b, "Third")):
            turn = await replica.post(
                f"/api/v1/conversations/{conversation}/messages", json={"content": text}
            )
            assert turn.status_code == 200, turn.text
        for replica in (a, b):
            messages = (await replica.get(f"/api/v1/conversations/{conversation}")).json()["messages"]
            assert [m["content"] for m in messages if m["role"] == "user"] == ["Hello", "And again", "Third"]
            assert [m["role"] for m in messages] == ["user", "assistant"] * 3

        # A version promoted through replica A is served by replica B.
        adapter = tmp_path / "shared-data" / "v-replicas.gguf"
        adapter.parent.mkdir(parents=True, exist_ok=True)
        digest = zero_lora(adapter)
        engine = create_engine(database)
        try:
            store = SqlLearningStore(create_sessionmaker(engine))
            await store.add_version(
                ModelVersion("v-replicas", model_file.sha256, BASE_VERSION, str(adapter), digest)
            )
        finally:
            await engine.dispose()
        promoted = await a.post("/api/v1/models/v-replicas/promote")
        assert promoted.status_code == 200, promoted.text

        async def b_serves() -> bool:
            return (await b.get("/v1/models")).json()["data"][0]["id"] == "v-replicas"

        await until(b_serves, 30, "replica B to serve the promoted version")
        turn = await b.post(f"/api/v1/conversations/{conversation}/messages", json={"content": "Fourth"})
        assert turn.json()["model_version"] == "v-replicas"

        # A training job queued through B runs in the worker process; A sees how it ended.
        job = await b.post("/api/v1/training/jobs", json={})
        assert job.status_code == 202, job.text

        async def finished() -> dict[str, Any] | None:
            state = (await a.get(f"/api/v1/training/jobs/{job.json()['id']}")).json()
            return state if state["status"] not in ("queued", "running") else None

        try:
            state = await until(finished, 90, "the worker to take the job")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; worker log: {(tmp_path / 'worker.log').read_text()[-3000:]}"
            ) from None
        # Too few examples in this fresh database: the worker refuses the job, it does not hang or vanish.
        assert state["status"] == "failed" and "example" in (state.get("error") or "")

"""Fault tests: the real app on a PostgreSQL and a Redis that the tests own (started here on spare ports in a
temporary directory), each killed with SIGKILL and restarted while turns keep arriving.

Checked: nothing crashes; while PostgreSQL is down chat answers 503 with Retry-After and /health/ready names
the database; while Redis is down turns are served without cache; both recover without restarting the app;
and every turn that was acknowledged (HTTP 200) is in the database afterwards, question and answer.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from agentloop.entrypoints.api import create_app
from agentloop.settings import Settings
from auth_helpers import admin_key, bearer, fast_auth
from fakes import FakeEngine
from services import OwnedPostgres, OwnedRedis

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LOAD_CLIENTS = 4


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="agentloop-faults-"))
    path.chmod(0o755)  # the postgres user must reach its data directory inside
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(workdir: Path) -> Iterator[OwnedPostgres]:
    server = OwnedPostgres(workdir / "pg")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def redis_server(workdir: Path) -> Iterator[OwnedRedis]:
    server = OwnedRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def client(
    postgres: OwnedPostgres, redis_server: OwnedRedis, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEngine]]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        database_url=postgres.url,
        redis_url=redis_server.url,
        breaker_failures=2,
        breaker_reset_s=0.5,
        _env_file=None,
        **fast_auth(),
    )
    engine = FakeEngine(["Stored answer."] * 10_000, delay_s=0.002)
    app = create_app(settings, engine=engine)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as http,
    ):
        http.headers.update(bearer(await admin_key(app)))
        yield http, engine


@dataclass
class Load:
    """Clients that each keep one conversation and send numbered messages until told to stop."""

    http: httpx.AsyncClient
    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    retry_after: set[str] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, number: int) -> None:
        conversation_id = await self._conversation()
        sent = 0
        while not self.stop.is_set():
            sent += 1
            text = f"client {number} message {sent}"
            reply = await self.http.post(
                f"/api/v1/conversations/{conversation_id}/messages", json={"content": text}
            )
            self.statuses.append(reply.status_code)
            if reply.status_code == 200:
                self.acknowledged.setdefault(conversation_id, []).append(text)
            elif reply.status_code == 503:
                self.retry_after.add(reply.headers.get("retry-after", "missing"))
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"unexpected {reply.status_code}: {reply.text}")

    async def turns(self, count: int, timeout_s: float = 60) -> None:
        """Wait until `count` turns were answered (whatever the status) in all."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(self.statuses) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def _conversation(self) -> str:
        reply = await self.http.post("/api/v1/conversations", json={})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["id"])

    async def run(self, during: asyncio.Future[None] | asyncio.Task[None]) -> None:
        clients = [asyncio.create_task(self.client(n)) for n in range(LOAD_CLIENTS)]
        try:
            await during
        finally:
            self.stop.set()
            await asyncio.gather(*clients)


async def stored_user_messages(postgres: OwnedPostgres) -> dict[str, list[str]]:
    """Straight from PostgreSQL, not through the app: conversation id -> user messages with an answer."""
    connection = await asyncpg.connect(
        host="127.0.0.1", port=postgres.port, user="postgres", database="postgres"
    )
    try:
        rows = await connection.fetch(
            "SELECT conversation_id, role, content FROM messages ORDER BY conversation_id, seq"
        )
    finally:
        await connection.close()
    stored: dict[str, list[str]] = {}
    pending: dict[str, str] = {}
    for row in rows:
        if row["role"] == "user":
            pending[row["conversation_id"]] = row["content"]
        elif row["role"] == "assistant" and row["conversation_id"] in pending:
            stored.setdefault(row["conversation_id"], []).append(pending.pop(row["conversation_id"]))
    return stored


async def wait_ready(http: httpx.AsyncClient, timeout_s: float = 20) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        reply = await http.get("/health/ready")
        if reply.status_code == 200 or asyncio.get_running_loop().time() > deadline:
            return reply
        await asyncio.sleep(0.2)


async def test_postgres_killed_and_restarted_under_load(
    client: tuple[httpx.AsyncClient, FakeEngine], postgres: OwnedPostgres
) -> None:
    http, _ = client
    load = Load(http)

    async def outage() -> None:
        await load.turns(2 * LOAD_CLIENTS)
        await asyncio.to_thread(postgres.kill)
        await asyncio.sleep(0.8)
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["database"]["ok"] is False and checks["model"]["ok"] is True
        await asyncio.to_thread(postgres.start)
        assert (await wait_ready(http)).status_code == 200
        await load.turns(len(load.statuses) + 2 * LOAD_CLIENTS)

    await load.run(asyncio.ensure_future(outage()))

    assert 503 in load.statuses, "the outage was not seen by any request"
    assert load.retry_after == {"5"}
    after_outage = load.statuses[len(load.statuses) - 3 :]
    assert after_outage == [200, 200, 200], "service did not resume by itself"
    stored = await stored_user_messages(postgres)
    for conversation_id, texts in load.acknowledged.items():
        assert set(texts) <= set(stored.get(conversation_id, [])), "an acknowledged turn was lost"
    assert sum(map(len, load.acknowledged.values())) > LOAD_CLIENTS


async def test_redis_killed_and_restarted_under_load(
    client: tuple[httpx.AsyncClient, FakeEngine], postgres: OwnedPostgres, redis_server: OwnedRedis
) -> None:
    http, _ = client
    load = Load(http)
    seen: dict[str, object] = {}

    async def outage() -> None:
        await load.turns(4 * LOAD_CLIENTS)
        before = (await http.get("/health/ready")).json()["checks"]["cache"]
        await asyncio.to_thread(redis_server.kill)
        await asyncio.sleep(1.0)
        during = await http.get("/health/ready")
        seen["during"] = (during.status_code, during.json()["checks"]["cache"])
        await asyncio.to_thread(redis_server.start)
        # The breaker skips Redis for its reset time (0.5 s here) after the failures: turns are fast enough to
        # all finish inside it, so wait it out before the load that must use the cache again.
        await asyncio.sleep(0.6)
        await load.turns(len(load.statuses) + 3 * LOAD_CLIENTS)
        seen["before"] = before

    await load.run(asyncio.ensure_future(outage()))

    assert set(load.statuses) == {200}, "a Redis outage must not fail a turn"
    status, cache_during = seen["during"]  # type: ignore[misc]
    assert status == 200 and cache_during["ok"] is False
    after = (await http.get("/health/ready")).json()["checks"]["cache"]
    before = seen["before"]
    assert after["ok"] is True and after["errors"] > 0
    assert after["hits"] > before["hits"] > 0  # type: ignore[index]
    assert before["hit_rate"] >= 0.5  # type: ignore[index]
    stored = await stored_user_messages(postgres)
    for conversation_id, texts in load.acknowledged.items():
        assert stored[conversation_id][-len(texts) :] == texts
    # What the cache serves is what the database holds.
    conversation_id, texts = next(iter(load.acknowledged.items()))
    detail = (await http.get(f"/api/v1/conversations/{conversation_id}")).json()
    assert [m["content"] for m in detail["messages"] if m["role"] == "user"][-len(texts) :] == texts

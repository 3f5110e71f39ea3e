"""The Redis conversation cache on the machine's Redis (127.0.0.1:6379): two stores stand for two replicas
sharing one Redis and one database (an in-memory FakeStore here, the SQL store in the fault tests)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from agentloop.adapters.cache import (
    CachedConversationStore,
    connect_redis,
    decode_message,
    encode_message,
)
from agentloop.application.resilience import BreakerState, CircuitBreaker
from agentloop.domain.model import Agent, Conversation, Message, Role, ToolCall, ToolResult, Usage
from fakes import FakeStore
from services import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
messages = st.builds(
    Message,
    conversation_id=st.text(min_size=1, max_size=8),
    role=st.sampled_from(list(Role)),
    content=st.text(max_size=200),
    tool_call=st.none()
    | st.builds(
        ToolCall,
        name=st.text(min_size=1, max_size=10),
        arguments=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    ),
    tool_result=st.none()
    | st.builds(
        ToolResult,
        call_id=st.text(max_size=8),
        name=st.text(max_size=8),
        output=st.text(max_size=50),
        ok=st.booleans(),
        error=st.none() | st.text(max_size=20),
        duration_ms=st.floats(0, 1e6),
    ),
    usage=st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6)),
    latency_ms=st.none() | st.floats(0, 1e6),
    model_version=st.none() | st.text(max_size=12),
    created_at=st.datetimes(timezones=st.just(UTC)),
)


@settings(max_examples=150)
@given(messages)
def test_cached_messages_decode_to_what_was_stored(message: Message) -> None:
    import json

    assert decode_message(json.loads(json.dumps(encode_message(message)))) == message


async def redis_or_skip() -> aioredis.Redis:
    client = connect_redis(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis on 127.0.0.1:6379 unreachable: {exc!r}")
        pytest.skip(f"Redis on 127.0.0.1:6379 unreachable: {exc!r}")
    return client


@pytest.fixture
async def replicas() -> AsyncIterator[
    tuple[FakeStore, CachedConversationStore, CachedConversationStore, str]
]:
    agent = Agent("a")
    database = FakeStore([agent])
    conversation = Conversation(agent.id, id=f"cache-test-{uuid.uuid4().hex}", created_at=datetime.now(UTC))
    await database.create_conversation(conversation)
    stores = []
    for name in ("a", "b"):
        stores.append(
            CachedConversationStore(database, await redis_or_skip(), CircuitBreaker(name), ttl_s=30)
        )  # type: ignore[arg-type]
    a, b = stores
    try:
        yield database, a, b, conversation.id
    finally:
        await a._forget(conversation.id)
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_replicas_read_each_others_turns_from_the_cache(replicas: tuple) -> None:
    _, a, b, cid = replicas
    await a.get_conversation(cid)  # miss, fills
    await b.append(cid, [Message(cid, Role.USER, "from b")])
    seen = await a.get_conversation(cid)
    assert [m.content for m in seen.messages] == ["from b"]
    assert (a.stats.hits, a.stats.misses) == (1, 1) and a.stats.hit_rate == 0.5


@pytest.mark.redis
async def test_a_slow_fill_never_overwrites_newer_messages(replicas: tuple) -> None:
    database, a, b, cid = replicas
    generation, cached = await a._read(cid)
    stale = await database.get_conversation(cid)  # a read the database before b's append...
    await b.append(cid, [Message(cid, Role.USER, "newer")])
    await a._store(stale, generation)  # ...and tries to fill after it: refused
    fresh = await b.get_conversation(cid)
    assert cached is None and [m.content for m in fresh.messages] == ["newer"]
    assert b.stats.misses == 1


@pytest.mark.redis
async def test_delete_drops_the_cached_conversation(replicas: tuple) -> None:
    database, a, _, cid = replicas
    await a.get_conversation(cid)
    database.conversations.pop(cid)
    a.inner.delete_conversation = _noop  # type: ignore[attr-defined]
    await a.delete_conversation(cid)
    assert (await a._read(cid))[1] is None


async def _noop(conversation_id: str) -> None:
    return None


async def test_without_redis_the_store_serves_from_the_database() -> None:
    agent = Agent("a")
    database = FakeStore([agent])
    conversation = Conversation(agent.id)
    await database.create_conversation(conversation)
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    store = CachedConversationStore(database, dead, CircuitBreaker("redis", 2, 60), ttl_s=30)  # type: ignore[arg-type]
    try:
        await store.append(conversation.id, [Message(conversation.id, Role.USER, "kept")])
        for _ in range(3):
            got = await store.get_conversation(conversation.id)
            assert [m.content for m in got.messages] == ["kept"]
        assert store.breaker.state == BreakerState.OPEN
        assert store.stats.errors == 2 and store.stats.hits == 0
        assert conversation.id in store._dirty  # dropped from the cache once Redis answers again
    finally:
        await store.close()

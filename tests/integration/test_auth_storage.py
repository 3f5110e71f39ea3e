"""SqlAuthStore on SQLite and PostgreSQL (users, keys, refresh sessions, the rotation race, family
revocation, the revocation counter, conversation ownership, migrations 0003 and 0004 down and up), and rate
limits shared through Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import timedelta

import pytest
import redis
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from agentloop.adapters.auth import Limits, RateLimiter, rate_limit_storage
from agentloop.adapters.storage import SqlStore, create_sessionmaker
from agentloop.adapters.storage.auth_repository import SqlAuthStore
from agentloop.adapters.storage.database import alembic_config
from agentloop.domain.auth import ApiKey, RefreshSession, Role, User
from agentloop.domain.model import Agent, Conversation, utcnow
from agentloop.errors import ConflictError, NotFoundError, RateLimitedError


@pytest.fixture
def auth_store(sql_engine: AsyncEngine) -> SqlAuthStore:
    return SqlAuthStore(create_sessionmaker(sql_engine))


async def test_users_and_keys_round_trip(auth_store: SqlAuthStore) -> None:
    user = User("alice", Role.TRAINER, "$argon2id$hash")
    await auth_store.add_user(user)
    assert await auth_store.get_user(user.id) == user
    assert await auth_store.get_user_by_name("alice") == user
    assert await auth_store.get_user_by_name("bob") is None
    with pytest.raises(ConflictError):
        await auth_store.add_user(User("alice", Role.USER, "x"))
    key = ApiKey("ci", Role.USER, "a" * 64, user.id)
    await auth_store.add_api_key(key)
    assert await auth_store.get_api_key("a" * 64) == key
    assert await auth_store.get_api_key("b" * 64) is None
    assert [u.username for u in await auth_store.list_users()] == ["alice"]


async def test_sessions_rotate_once_and_families_revoke(auth_store: SqlAuthStore) -> None:
    expires = utcnow() + timedelta(days=1)
    first = RefreshSession("u1", "fam-1", "h1", expires)
    other = RefreshSession("u1", "fam-2", "h2", expires)
    await auth_store.add_session(first)
    await auth_store.add_session(other)
    assert await auth_store.get_session("h1") == first
    # Of two concurrent rotations of one token, exactly one wins.
    results = await asyncio.gather(auth_store.use_session(first.id), auth_store.use_session(first.id))
    assert sorted(results) == [False, True]
    assert (await auth_store.get_session("h1")).used  # type: ignore[union-attr]
    assert not await auth_store.family_revoked("fam-1")
    await auth_store.revoke_family("fam-1")
    assert await auth_store.family_revoked("fam-1")
    assert not await auth_store.family_revoked("fam-2")


async def test_every_revocation_bumps_the_counter(auth_store: SqlAuthStore) -> None:
    assert await auth_store.revocations() == 0
    user = User("alice", Role.USER, "$argon2id$hash")
    await auth_store.add_user(user)
    key = ApiKey("ci", Role.USER, "c" * 64, user.id)
    await auth_store.add_api_key(key)
    await auth_store.add_session(RefreshSession(user.id, "fam-9", "h9", utcnow() + timedelta(days=1)))
    assert await auth_store.revocations() == 0  # adding grants nothing to re-check
    await auth_store.revoke_api_key(key.id)
    assert await auth_store.revocations() == 1
    await auth_store.set_disabled("alice", True)
    await auth_store.revoke_family("fam-9")
    assert await auth_store.revocations() == 3
    with pytest.raises(NotFoundError):
        await auth_store.revoke_api_key("nope")  # nothing revoked, nothing counted
    assert await auth_store.revocations() == 3


async def test_conversations_are_listed_per_owner(sql_store: SqlStore) -> None:
    agent = Agent("a")
    await sql_store.create_agent(agent)
    mine = Conversation(agent.id, owner_id="u1")
    theirs = Conversation(agent.id, owner_id="u2")
    unowned = Conversation(agent.id)
    for conversation in (mine, theirs, unowned):
        await sql_store.create_conversation(conversation)
    items, total = await sql_store.list_conversations(10, 0, owner_id="u1")
    assert [c.id for c in items] == [mine.id] and total == 1
    assert (await sql_store.list_conversations(10, 0))[1] == 3
    assert await sql_store.conversation_owner(theirs.id) == "u2"
    assert await sql_store.conversation_owner(unowned.id) is None
    assert (await sql_store.get_conversation(mine.id)).owner_id == "u1"
    with pytest.raises(NotFoundError):
        await sql_store.conversation_owner("nope")


async def test_migration_0003_downgrades_and_upgrades(sql_engine: AsyncEngine, database_url: str) -> None:
    from alembic import command

    def tables(sync: object) -> set[str]:
        return set(inspect(sync).get_table_names())

    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "0003")
    async with sql_engine.connect() as connection:
        assert "auth_state" not in await connection.run_sync(tables)
    await asyncio.to_thread(command.downgrade, config, "0002")
    async with sql_engine.connect() as connection:
        assert "users" not in await connection.run_sync(tables)
    await asyncio.to_thread(command.upgrade, config, "head")
    async with sql_engine.connect() as connection:
        assert {"users", "api_keys", "refresh_tokens", "auth_state"} <= await connection.run_sync(tables)
    assert await SqlAuthStore(create_sessionmaker(sql_engine)).revocations() == 0


@pytest.mark.redis
async def test_redis_rate_limit_is_shared_between_limiters() -> None:
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    key = f"test-{secrets.token_hex(6)}"
    url = "redis://127.0.0.1:6379/0"
    # An hour's window: a minute's boundary, crossed on the real clock, would let the sliding-window counter
    # (ADR-0006) forget part of the first window.
    first = RateLimiter(Limits(per_ip="2/hour"), rate_limit_storage(url))
    second = RateLimiter(Limits(per_ip="2/hour"), rate_limit_storage(url))
    await first.hit("ip", key)
    await second.hit("ip", key)
    with pytest.raises(RateLimitedError):
        await first.hit("ip", key)

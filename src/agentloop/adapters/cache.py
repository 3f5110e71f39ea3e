"""The conversation-context cache: a ConversationStore in front of the SQL store, on Redis (redis.asyncio).

The database stays the source of truth; Redis holds each conversation read by a turn (a JSON header and a
list of JSON messages) so the next turn of that conversation, on any replica, skips the database read.

- Appends write the database first, then push the new messages onto the cached list, atomically in a Lua
  script and only if the entry exists.
- Every append bumps a per-conversation generation counter; a replica that missed and read the database
  fills the cache only if the counter did not move meanwhile, so a slow fill never overwrites newer messages.
- Redis failing is never an error for the caller: the cache is skipped (its circuit breaker opens after a
  few failures, so a dead Redis costs nothing per request) and comes back by itself. A conversation whose
  cache update failed is dropped from the cache as soon as Redis answers again; entries expire after
  `AGENTLOOP_CACHE_TTL_S` in any case.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from agentloop.adapters.storage.repository import SqlStore
from agentloop.application.resilience import CircuitBreaker
from agentloop.domain.events import Event
from agentloop.domain.model import Agent, Conversation, Message, Role, ToolCall, ToolResult, Usage

logger = logging.getLogger(__name__)

T = TypeVar("T")
PREFIX = "agentloop:conv:"
REDIS_TIMEOUT_S = 0.5

_FILL = """
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

_APPEND = """
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""


def connect_redis(url: str) -> aioredis.Redis:
    """A client that fails fast (short timeouts, one quick retry): the breakers decide what happens next."""
    return aioredis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.1), retries=1),
    )


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "errors": self.errors, "hit_rate": self.hit_rate}


def _keys(conversation_id: str) -> list[str]:
    base = PREFIX + conversation_id
    return [base, base + ":msgs", base + ":gen"]


class CachedConversationStore:
    """The ConversationStore port: reads through Redis, writes to the SQL store and keeps Redis in step."""

    def __init__(
        self, inner: SqlStore, client: aioredis.Redis, breaker: CircuitBreaker, ttl_s: int = 600
    ) -> None:
        self.inner = inner
        self.client = client
        self.breaker = breaker
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self._dirty: set[str] = set()
        self._fill = client.register_script(_FILL)
        self._append = client.register_script(_APPEND)

    async def get_agent(self, agent_id: str) -> Agent:
        return await self.inner.get_agent(agent_id)

    async def create_conversation(self, conversation: Conversation) -> None:
        await self.inner.create_conversation(conversation)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        cached = await self._redis(lambda: self._read(conversation_id))
        if cached is not None and cached[1] is not None:
            self.stats.hits += 1
            return cached[1]
        self.stats.misses += 1
        conversation = await self.inner.get_conversation(conversation_id)
        if cached is not None:
            generation = cached[0]
            await self._redis(lambda: self._store(conversation, generation))
        return conversation

    async def append(
        self, conversation_id: str, messages: Sequence[Message], events: Sequence[Event] = ()
    ) -> None:
        await self.inner.append(conversation_id, messages, events)
        encoded = [json.dumps(encode_message(m)) for m in messages]
        pushed = await self._redis(
            lambda: self._append(keys=_keys(conversation_id), args=[self.ttl_s, *encoded])
        )
        if pushed is None:
            self._dirty.add(conversation_id)

    async def delete_conversation(self, conversation_id: str) -> None:
        await self.inner.delete_conversation(conversation_id)
        if not await self._redis(lambda: self._forget(conversation_id)):
            self._dirty.add(conversation_id)

    async def ping(self) -> None:
        """Raises if Redis does not answer (for readiness)."""
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def _read(self, conversation_id: str) -> tuple[str, Conversation | None]:
        head, msgs, gen = _keys(conversation_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(gen)
            pipe.get(head)
            pipe.lrange(msgs, 0, -1)
            generation, header, items = await pipe.execute()
        token = generation.decode() if generation else "0"
        if header is None:
            return token, None
        messages = [decode_message(json.loads(item)) for item in items]
        return token, decode_conversation(json.loads(header), messages)

    async def _store(self, conversation: Conversation, generation: str) -> None:
        header = json.dumps(encode_conversation(conversation))
        messages = [json.dumps(encode_message(m)) for m in conversation.messages]
        await self._fill(keys=_keys(conversation.id), args=[generation, self.ttl_s, header, *messages])

    async def _forget(self, conversation_id: str) -> bool:
        head, msgs, gen = _keys(conversation_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(head, msgs)
            pipe.incr(gen)
            pipe.expire(gen, self.ttl_s)
            await pipe.execute()
        return True

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run a cache operation; on any Redis failure count it and carry on without the cache."""
        if not self.breaker.allow():
            return None
        try:
            if self._dirty:
                await self._flush_dirty()
            result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self.stats.errors += 1
            self.breaker.record_failure()
            logger.warning("conversation cache skipped: Redis failed (%s)", type(exc).__name__)
            return None
        self.breaker.record_success()
        return result

    async def _flush_dirty(self) -> None:
        for conversation_id in list(self._dirty):
            await self._forget(conversation_id)
            self._dirty.discard(conversation_id)


# --- JSON codec for the cached domain objects ---------------------------------------------------------------


def encode_conversation(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "agent_id": conversation.agent_id,
        "title": conversation.title,
        "source": conversation.source,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def decode_conversation(data: dict[str, Any], messages: list[Message]) -> Conversation:
    return Conversation(
        agent_id=data["agent_id"],
        title=data["title"],
        messages=messages,
        source=data["source"],
        id=data["id"],
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )


def encode_message(message: Message) -> dict[str, Any]:
    call, result = message.tool_call, message.tool_result
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "role": message.role.value,
        "content": message.content,
        "tool_call": None
        if call is None
        else {"name": call.name, "arguments": call.arguments, "id": call.id},
        "tool_result": None if result is None else vars(result).copy(),
        "usage": [message.usage.prompt_tokens, message.usage.completion_tokens],
        "latency_ms": message.latency_ms,
        "model_version": message.model_version,
        "created_at": message.created_at.isoformat(),
    }


def decode_message(data: dict[str, Any]) -> Message:
    call, result = data["tool_call"], data["tool_result"]
    return Message(
        conversation_id=data["conversation_id"],
        role=Role(data["role"]),
        content=data["content"],
        tool_call=None if call is None else ToolCall(call["name"], call["arguments"], id=call["id"]),
        tool_result=None if result is None else ToolResult(**result),
        usage=Usage(*data["usage"]),
        latency_ms=data["latency_ms"],
        model_version=data["model_version"],
        id=data["id"],
        created_at=datetime.fromisoformat(data["created_at"]),
    )

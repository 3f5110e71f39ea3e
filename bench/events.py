"""events: how many domain events per second the application records.

There is no in-process event bus: domain events (ToolExecuted, ResponseGenerated, ConversationSaved, ...) are
written to the events table in the same transaction as the messages they describe (`SqlStore.append`), or
on their own (`SqlLearningStore.add_events`). So this measures that stored-events path on the default store
(SQLite in WAL mode, a temporary data dir), through the real repositories:
- per_event: one event per transaction, one writer (the worst case);
- per_turn: what a finished agent turn writes: one message and its three events in one transaction;
- concurrent: 10 writers at once, one event each per call (SQLite has one writer at a time; calls that arrive
  while a transaction commits share the next one: group commit, adapters/storage/group_commit.py);
- concurrent_turns: 10 writers at once, each call an agent turn's message and three events;
- batched: 100 events per call.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Row

SEED_EPS, AIM_EPS = 1000, 10_000
WRITERS = 10
BATCH = 100


async def run(quick: bool) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from agentloop.adapters.storage.database import create_engine, upgrade
    from agentloop.adapters.storage.learning_repository import SqlLearningStore
    from agentloop.adapters.storage.repository import SqlStore
    from agentloop.domain.events import ConversationSaved, ResponseGenerated, ToolExecuted
    from agentloop.domain.model import Agent, Conversation, Message, ModelConfig, Role

    seconds = 2.0 if quick else 6.0
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="agentloop-bench-events-") as data_dir:
        url = f"sqlite+aiosqlite:///{Path(data_dir) / 'bench.db'}"
        await asyncio.to_thread(upgrade, url)
        database = create_engine(url)
        sessions = async_sessionmaker(database, expire_on_commit=False)
        store, learning = SqlStore(sessions), SqlLearningStore(sessions)
        agent = Agent("bench", ModelConfig())
        await store.create_agent(agent)
        conversation = Conversation(agent.id)
        await store.create_conversation(conversation)

        def tool_event() -> ToolExecuted:
            return ToolExecuted(
                conversation_id=conversation.id, tool_name="calculator", ok=True, duration_ms=1.0
            )

        async def per_event() -> int:
            await learning.add_events([tool_event()])
            return 1

        async def per_turn() -> int:
            message = Message(conversation.id, Role.ASSISTANT, "42")
            events = [
                tool_event(),
                ResponseGenerated(
                    conversation_id=conversation.id,
                    message_id=message.id,
                    model_version="base",
                    prompt_tokens=500,
                    completion_tokens=10,
                    latency_ms=900.0,
                    steps=1,
                ),
                ConversationSaved(conversation_id=conversation.id, message_count=2),
            ]
            await store.append(conversation.id, [message], events)
            return len(events)

        async def batched() -> int:
            await learning.add_events([tool_event() for _ in range(BATCH)])
            return BATCH

        try:
            events_alone, turns = learning._event_writes, store._appends
            for name, action, writers, commits in (
                ("per_event", per_event, 1, events_alone),
                ("per_turn", per_turn, 1, turns),
                ("concurrent", per_event, WRITERS, events_alone),
                ("concurrent_turns", per_turn, WRITERS, turns),
                ("batched", batched, 1, events_alone),
            ):
                await _measure(action, writers, 0.3)  # warm-up
                before = commits.transactions
                results[name] = await _measure(action, writers, seconds)
                results[name]["transactions"] = commits.transactions - before
        finally:
            await database.dispose()
    return _result(results, seconds)


async def _measure(action: Any, writers: int, seconds: float) -> dict[str, Any]:
    counts = [0] * writers
    calls = [0] * writers
    deadline = time.monotonic() + seconds

    async def writer(index: int) -> None:
        while time.monotonic() < deadline:
            counts[index] += await action()
            calls[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    wall = time.perf_counter() - started
    return {
        "writers": writers,
        "events": sum(counts),
        "seconds": wall,
        "events_per_s": sum(counts) / wall,
        "calls": sum(calls),
        "ms_per_call": 1000.0 * wall * writers / max(1, sum(calls)),
    }


def _result(results: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    labels = {
        "per_event": "one event per call",
        "per_turn": "an agent turn's message + 3 events per call",
        "concurrent": f"{WRITERS} writers, one event per call",
        "concurrent_turns": f"{WRITERS} writers, an agent turn per call",
        "batched": f"{BATCH} events per call",
    }
    rows = [
        Row(
            f"events recorded/s, {labels[name]} (ratio = / seed {SEED_EPS})",
            "ev/s",
            result["events_per_s"],
            float(SEED_EPS),
            result["events_per_s"] / SEED_EPS,
            f">= {SEED_EPS} (aim {AIM_EPS})",
            result["events_per_s"] >= SEED_EPS,
        )
        for name, result in results.items()
    ]
    return {
        "parameters": {
            "store": "SQLite (aiosqlite, WAL) in a temporary dir, real repositories and migrations",
            "seconds_per_case": seconds,
            "writers": WRITERS,
            "batch": BATCH,
            "path": "no in-process bus: events are rows written with the messages they describe",
        },
        "measured": results,
        "notes": [
            "events: the application has no in-process event bus; events are recorded in the database in "
            "the transaction that stores what they describe, so events/s is bounded by commits/s (SQLite in "
            "WAL mode with synchronous=NORMAL: no fsync per commit). Concurrent calls share transactions "
            "(group commit): a call returns once the transaction holding its rows has committed."
        ],
        "rows": rows,
    }

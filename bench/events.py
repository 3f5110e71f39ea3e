"""events: how many domain events per second the application records.

There is no in-process event bus: domain events (ToolExecuted, ResponseGenerated, ConversationSaved, ...) are
written to the events table in the same transaction as the messages they describe (`SqlStore.append`), or
on their own (`SqlLearningStore.add_events`). So this measures that stored-events path on the default store
(SQLite in WAL mode, a temporary data dir), through the real repositories:
- per_event: one event per transaction, one writer (the worst case);
- per_turn: what a finished agent turn writes: one message and its three events in one transaction;
- concurrent: 10 writers at once, one event per transaction (SQLite has one writer at a time);
- batched: 100 events per transaction.
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
            for name, action, writers in (
                ("per_event", per_event, 1),
                ("per_turn", per_turn, 1),
                ("concurrent", per_event, WRITERS),
                ("batched", batched, 1),
            ):
                await _measure(action, writers, 0.3)  # warm-up
                results[name] = await _measure(action, writers, seconds)
        finally:
            await database.dispose()
    return _result(results, seconds)


async def _measure(action: Any, writers: int, seconds: float) -> dict[str, Any]:
    counts = [0] * writers
    transactions = [0] * writers
    deadline = time.monotonic() + seconds

    async def writer(index: int) -> None:
        while time.monotonic() < deadline:
            counts[index] += await action()
            transactions[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    wall = time.perf_counter() - started
    return {
        "writers": writers,
        "events": sum(counts),
        "transactions": sum(transactions),
        "seconds": wall,
        "events_per_s": sum(counts) / wall,
        "ms_per_transaction": 1000.0 * wall * writers / max(1, sum(transactions)),
    }


def _result(results: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    labels = {
        "per_event": "one event per transaction",
        "per_turn": "an agent turn's message + 3 events per transaction",
        "concurrent": f"{WRITERS} writers, one event per transaction",
        "batched": f"{BATCH} events per transaction",
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
            "the transaction that stores what they describe, so events/s is bounded by commits/s "
            "(SQLite fsyncs each commit); batching events into one transaction is what reaches high rates."
        ],
        "rows": rows,
    }

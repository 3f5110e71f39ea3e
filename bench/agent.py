"""agent: the agent loop's own cost per turn, around the real engine, tools and SQLite store.

Each question is one `AgentService.ask` in a new conversation, wired by the real `bootstrap` (temp data dir).
Per turn: total = wall time of `ask`; model = sum of Completion.duration_ms (time the engine reports for each
model call); tools = sum of ToolResult.duration_ms; overhead = total - model - tools. The overhead is split
further by timing wrappers: engine plumbing (waiting on `stream` beyond duration_ms: queue hop, thread ->
event loop delivery), count_tokens (the agent's context check), storage (every store call).
"""

from __future__ import annotations

import inspect
import tempfile
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from bench.common import N_BATCH, N_CTX, N_THREADS, Row, bench_settings, median, ratio

TARGET_OVERHEAD_PCT = 5.0
QUESTIONS = (
    "What is 12*7?",
    "What is 1234 * 5678?",
    "What is 365 * 24?",
    "What is 2 ** 16?",
    "What is 1000 - 1?",
)
WARMUP_QUESTION = "What is 3+4?"


class TimedEngine:
    """The InferenceEngine protocol around a real engine, adding up where the time goes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.count_ms = 0.0

    @property
    def model_version(self) -> str:
        return str(self.inner.model_version)

    @property
    def context_size(self) -> int:
        return int(self.inner.context_size)

    async def count_tokens(self, text: str) -> int:
        started = time.perf_counter()
        try:
            return int(await self.inner.count_tokens(text))
        finally:
            self.count_ms += (time.perf_counter() - started) * 1000.0

    async def stream(self, request: Any) -> AsyncGenerator[Any, None]:
        from agentloop.application.ports import Completion

        # Only time spent waiting on the inner stream counts: the consumer's work between items is agent time.
        waited = 0.0
        async with aclosing(self.inner.stream(request)) as items:
            while True:
                started = time.perf_counter()
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                waited += time.perf_counter() - started
                if isinstance(item, Completion):
                    self.calls.append(_call_record(request, item, waited * 1000.0))
                yield item

    async def close(self) -> None:
        await self.inner.close()


def _call_record(request: Any, completion: Any, waited_ms: float) -> dict[str, Any]:
    constraint = request.constraint
    return {
        "constraint": None if constraint is None else ("call or text" if constraint.allow_call else "text"),
        "duration_ms": completion.duration_ms,
        "waited_ms": waited_ms,
        "ttft_ms": completion.ttft_ms,
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "finish_reason": completion.finish_reason,
        "text": completion.text,
    }


class TimedStore:
    """Any store, timing every coroutine method it exposes."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.ms = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attribute(*args, **kwargs)
            finally:
                self.ms += (time.perf_counter() - started) * 1000.0
                self.calls += 1

        return timed


async def _turn(container: Any, engine: TimedEngine, store: TimedStore, question: str) -> dict[str, Any]:
    from agentloop.domain.model import Conversation

    conversation = Conversation(container.default_agent.id, title="bench")
    await container.store.create_conversation(conversation)
    engine.reset()
    store.ms, store.calls = 0.0, 0
    started = time.perf_counter()
    finished = await container.agents.ask(conversation.id, question)
    total_ms = (time.perf_counter() - started) * 1000.0
    model_ms = sum(call["duration_ms"] for call in engine.calls)
    waited_ms = sum(call["waited_ms"] for call in engine.calls)
    tools_ms = sum(result.duration_ms for _, result in finished.steps)
    overhead_ms = total_ms - model_ms - tools_ms
    return {
        "question": question,
        "answer": finished.message.content,
        "tool_calls": [
            {"name": c.name, "arguments": c.arguments, "output": r.output} for c, r in finished.steps
        ],
        "model_calls": engine.calls,
        "total_ms": total_ms,
        "model_ms": model_ms,
        "tools_ms": tools_ms,
        "overhead_ms": overhead_ms,
        "overhead_pct": 100.0 * overhead_ms / total_ms,
        "overhead_split_ms": {
            "engine_plumbing": waited_ms - model_ms,
            "count_tokens": engine.count_ms,
            "storage": store.ms,
            "other_agent_code": overhead_ms - (waited_ms - model_ms) - engine.count_ms - store.ms,
        },
        "storage_calls": store.calls,
    }


async def run(quick: bool) -> dict[str, Any]:
    from agentloop.bootstrap import bootstrap, start_embedded_engine

    questions = QUESTIONS[:3] if quick else QUESTIONS
    with tempfile.TemporaryDirectory(prefix="agentloop-bench-") as data_dir:
        settings = bench_settings(Path(data_dir))
        inner, _ = await start_embedded_engine(settings)
        engine = TimedEngine(inner)
        async with bootstrap(settings, engine=engine) as container:
            store = TimedStore(container.agents.store)
            container.agents.store = store
            # Warm-up: fills the KV cache with the shared prefix (system text, tools, examples) and the pools.
            await _turn(container, engine, store, WARMUP_QUESTION)
            turns = [await _turn(container, engine, store, question) for question in questions]
            single_line = settings.single_line_answers
    return _result(turns, single_line)


def _result(turns: list[dict[str, Any]], single_line: bool) -> dict[str, Any]:
    totals = {key: sum(t[key] for t in turns) for key in ("total_ms", "model_ms", "tools_ms", "overhead_ms")}
    medians = {
        key: median([t[key] for t in turns]) for key in ("total_ms", "model_ms", "tools_ms", "overhead_ms")
    }
    medians["overhead_pct"] = median([t["overhead_pct"] for t in turns])
    split = {
        key: median([t["overhead_split_ms"][key] for t in turns]) for key in turns[0]["overhead_split_ms"]
    }
    aggregate_pct = 100.0 * totals["overhead_ms"] / totals["total_ms"]
    split_text = ", ".join(f"{key.replace('_', ' ')} {value:.0f}" for key, value in split.items())
    answers = "; ".join(
        f"{t['question']!r} -> {len(t['model_calls'])} model calls, tools "
        f"{[c['name'] for c in t['tool_calls']]}, answer {t['answer'][:40]!r}"
        for t in turns
    )
    return {
        "parameters": {
            "questions": [t["question"] for t in turns],
            "warmup_question": WARMUP_QUESTION,
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "n_batch": N_BATCH,
            "single_line_answers": single_line,
            "store": "SQLite (aiosqlite) in a temporary data dir",
            "overhead": "total - sum(Completion.duration_ms) - sum(ToolResult.duration_ms)",
        },
        "samples": turns,
        "medians": {**medians, "overhead_split_ms": split},
        "totals": {**totals, "overhead_pct": aggregate_pct},
        "notes": [
            f"agent: overhead over all turns {aggregate_pct:.2f}% of {totals['total_ms'] / 1000:.1f} s; "
            f"median split per turn (ms): {split_text}.",
            f"agent turns: {answers}.",
        ],
        "rows": [
            Row(
                "agent: overhead per turn (median % of turn time)",
                "%",
                medians["overhead_pct"],
                None,
                None,
                f"< {TARGET_OVERHEAD_PCT}%",
                medians["overhead_pct"] < TARGET_OVERHEAD_PCT,
            ),
            Row(
                "agent: overhead vs the whole turn, median ms (ratio = overhead share)",
                "ms",
                medians["overhead_ms"],
                medians["total_ms"],
                ratio(medians["overhead_ms"], medians["total_ms"]),
                "info",
                None,
            ),
        ],
    }

"""concurrency: 10 chat sessions at once against the real server, against one session at a time.

A real `agentloop serve` process with whatever engine is in the tree; clients are asyncio tasks in this
process (httpx), each a chat session over POST /v1/chat/completions that keeps its recent history. The run
alternates blocks: `SESSIONS` sessions at once, then the same load one request at a time (the serialized
baseline), so background load hits both. Throughput is completed completion tokens per second of a block;
latency is per request. If the engine has a setting that turns batching of concurrent sequences off
(`BATCH_SETTINGS`), a second server with it at 1 runs the concurrent load too ("unbatched").
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.common import Row
from bench.engine import counting_prompt
from bench.stats import latency_summary

SESSIONS = 10
MAX_TOKENS = 24
HISTORY_MESSAGES = 4  # a session sends its last few messages, so prompts stay a realistic, bounded size
# Settings a batching engine may expose for how many sequences it decodes together; 1 = serialized.
BATCH_SETTINGS = (
    "max_parallel",
    "n_parallel",
    "parallel_sequences",
    "max_batch_sequences",
    "n_seq_max",
    "batch_sequences",
)


def batch_setting() -> str | None:
    from agentloop.settings import Settings

    return next((name for name in BATCH_SETTINGS if name in Settings.model_fields), None)


class Session:
    def __init__(self, index: int) -> None:
        self.index = index
        self.turn = 0
        self.history: list[dict[str, str]] = []

    def next_messages(self) -> list[dict[str, str]]:
        start = 1000 + 97 * self.index + 31 * self.turn
        self.turn += 1
        self.history.append({"role": "user", "content": "Keep counting: " + counting_prompt(start)})
        return self.history[-HISTORY_MESSAGES:]

    def answered(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})


async def _one(client: httpx.AsyncClient, url: str, session: Session, out: list[dict[str, Any]]) -> None:
    body = {"model": "gemma", "messages": session.next_messages(), "max_tokens": MAX_TOKENS}
    started = time.perf_counter()
    try:
        response = await client.post(url + "/v1/chat/completions", json=body)
        ok = response.status_code == 200
        data = response.json() if ok else {}
        error = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
    except (httpx.HTTPError, ValueError) as exc:
        ok, data, error = False, {}, f"{type(exc).__name__}: {exc}"
    latency_ms = (time.perf_counter() - started) * 1000.0
    tokens = data.get("usage", {}).get("completion_tokens", 0) if ok else 0
    if ok:
        session.answered(data["choices"][0]["message"]["content"] or "")
    out.append({"session": session.index, "ok": ok, "ms": latency_ms, "tokens": tokens, "error": error})


async def _session_loop(
    client: httpx.AsyncClient, url: str, session: Session, deadline: float, out: list[dict[str, Any]]
) -> None:
    while time.monotonic() < deadline:
        await _one(client, url, session, out)


async def _block(
    client: httpx.AsyncClient, server: procs.Server, sessions: list[Session], seconds: float, concurrent: bool
) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    if concurrent:
        await asyncio.gather(*(_session_loop(client, server.url, s, deadline, samples) for s in sessions))
    else:
        # One request at a time, taking the sessions in turn: the same work, serialized by the client.
        while time.monotonic() < deadline:
            for session in sessions:
                if time.monotonic() >= deadline:
                    break
                await _one(client, server.url, session, samples)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "samples": samples, "memory": server.memory()}


async def alternate_blocks(
    client: httpx.AsyncClient, arms: list[tuple[Any, procs.Server, bool]], blocks: int, block_s: float
) -> dict[Any, list[dict[str, Any]]]:
    """Each arm's blocks: every server warmed up once, then `blocks` rounds in which each arm (a name, its
    server, and whether its `SESSIONS` fresh sessions run at once or one request at a time) runs for
    `block_s`, the order of the arms reversing each round, so slow drifts of the machine hit every arm
    alike."""
    for server in {id(server): server for _, server, _ in arms}.values():  # warm-up, each server once
        await _block(client, server, [Session(99)], 0.1, False)
    results: dict[Any, list[dict[str, Any]]] = {name: [] for name, _, _ in arms}
    for block in range(blocks):
        for name, server, concurrent in arms if block % 2 == 0 else arms[::-1]:
            sessions = [Session(i) for i in range(SESSIONS)]
            outcome = await _block(client, server, sessions, block_s, concurrent)
            results[name].append({"block": block, **outcome})
    return results


async def _sample_memory(servers: list[procs.Server], peaks: dict[str, float]) -> None:
    while True:
        for server in servers:
            peaks[server.name] = max(peaks.get(server.name, 0.0), server.memory()["rss_mb"])
        await asyncio.sleep(1.0)


async def run(quick: bool) -> dict[str, Any]:
    blocks, block_s = (2, 10.0) if quick else (4, 30.0)
    setting = batch_setting()
    arms: list[tuple[str, bool]] = [("concurrent", True), ("serial", False)]
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="agentloop-bench-conc-") as data_dir:
        servers = {"concurrent": procs.ours(Path(data_dir) / "a")}
        if setting:
            servers["unbatched"] = procs.ours(Path(data_dir) / "b", **{setting: 1})
            servers["unbatched"].name = "agentloop-unbatched"
            arms.insert(1, ("unbatched", True))
        try:
            for server in servers.values():
                server.start()
            sampler = asyncio.create_task(_sample_memory(list(servers.values()), peaks))
            limits = httpx.Limits(max_connections=SESSIONS * 2)
            auth = procs.ServerAuth(*servers.values())
            async with httpx.AsyncClient(timeout=600.0, limits=limits, auth=auth) as client:
                runs = [
                    (arm, servers.get(arm, servers["concurrent"]), concurrent) for arm, concurrent in arms
                ]
                results = await alternate_blocks(client, runs, blocks, block_s)
            sampler.cancel()
            memory = {name: server.memory() for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    return _result(results, blocks, block_s, setting, memory, peaks)


def summarize(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput, latency percentiles and errors over an arm's blocks."""
    samples = [s for block in blocks for s in block["samples"]]
    wall = sum(block["wall_s"] for block in blocks)
    ok = [s for s in samples if s["ok"]]
    tokens = sum(s["tokens"] for s in ok)
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "error_examples": sorted({s["error"] for s in samples if s["error"]})[:5],
        "wall_s": wall,
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "latency_ms": latency_summary([s["ms"] for s in ok]),
        "block_tokens_per_s": [
            sum(s["tokens"] for s in b["samples"] if s["ok"]) / b["wall_s"] for b in blocks if b["wall_s"]
        ],
    }


def _result(
    results: dict[str, list[dict[str, Any]]],
    blocks: int,
    block_s: float,
    setting: str | None,
    memory: dict[str, dict[str, float]],
    peaks: dict[str, float],
) -> dict[str, Any]:
    summary = {arm: summarize(arm_blocks) for arm, arm_blocks in results.items()}
    conc, serial = summary["concurrent"], summary["serial"]
    per_block = [
        c / s for c, s in zip(conc["block_tokens_per_s"], serial["block_tokens_per_s"], strict=False) if s
    ]
    gain = sorted(per_block)[len(per_block) // 2] if per_block else None
    lat = conc["latency_ms"]
    rows = [
        Row(
            f"concurrency: {SESSIONS} sessions, completion tokens/s vs one request at a time",
            "tok/s",
            conc["tokens_per_s"],
            serial["tokens_per_s"],
            gain,
            "> 1 (batching gain)",
            None if gain is None else gain > 1.0,
        ),
        Row(
            f"concurrency: {SESSIONS} sessions, request latency P50 / P95 / P99",
            "ms",
            lat["p50"],
            None,
            None,
            f"P95 {lat['p95']:.0f} ms, P99 {lat['p99']:.0f} ms",
            None,
        ),
        Row(
            "concurrency: failed requests (all arms)",
            "",
            float(sum(s["errors"] for s in summary.values())),
            None,
            None,
            "0",
            sum(s["errors"] for s in summary.values()) == 0,
        ),
        Row(
            "concurrency: server peak RSS under load",
            "MB",
            memory["concurrent"]["peak_rss_mb"],
            None,
            None,
            "<= 8192 MB",
            memory["concurrent"]["peak_rss_mb"] <= 8192,
        ),
    ]
    if "unbatched" in summary:
        unbatched = summary["unbatched"]
        ratios = [
            c / u
            for c, u in zip(conc["block_tokens_per_s"], unbatched["block_tokens_per_s"], strict=False)
            if u
        ]
        rows.insert(
            1,
            Row(
                f"concurrency: {SESSIONS} sessions, tokens/s batched vs {setting}=1",
                "tok/s",
                conc["tokens_per_s"],
                unbatched["tokens_per_s"],
                sorted(ratios)[len(ratios) // 2] if ratios else None,
                "> 1",
                bool(ratios) and sorted(ratios)[len(ratios) // 2] > 1.0,
            ),
        )
    engine_note = (
        f"the server's engine exposes {setting!r}; the 'unbatched' arm runs it at 1"
        if setting
        else "the engine in this tree has no batching setting: requests are decoded one at a time, so the "
        "concurrent arm measures queueing, not batching"
    )
    return {
        "parameters": {
            "sessions": SESSIONS,
            "max_tokens": MAX_TOKENS,
            "history_messages": HISTORY_MESSAGES,
            "blocks_per_arm": blocks,
            "block_s": block_s,
            "concurrent_s_total": blocks * block_s,
            "batch_setting": setting,
            "order": "blocks alternate between arms, the order reversing each block",
        },
        "summary": summary,
        "memory_mb": memory,
        "sampled_peak_rss_mb": peaks,
        "blocks": results,
        "notes": [
            f"concurrency: {engine_note}. Latency P50/P95/P99 under {SESSIONS} sessions: "
            f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} ms; one at a time: "
            f"{serial['latency_ms']['p50']:.0f} / {serial['latency_ms']['p95']:.0f} / "
            f"{serial['latency_ms']['p99']:.0f} ms."
        ],
        "rows": rows,
    }

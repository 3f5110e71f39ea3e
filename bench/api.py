"""api: our OpenAI-compatible /v1/chat/completions against `python -m llama_cpp.server`, streaming and not.

Both servers run as real processes at the same time on the same GGUF and engine settings (n_ctx, threads,
n_batch); one httpx client in this process sends the same chat to each, one request at a time, the order
alternating every round. llama_cpp.server renders Gemma turns as `<start_of_turn>user\\n{content}
<end_of_turn>` and ours as `...user\\n{content}\\n<end_of_turn>`: it receives the content with a
trailing newline, so both models see the very same prompt string and decode the same greedy tokens (the
JSON checks it). A new prompt every round, so both arms process the whole prompt each time.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.common import Row, median, model_path
from bench.engine import counting_prompt
from bench.stats import paired_ratio

TARGET_OVERHEAD = 0.05  # ours may take at most 5% longer per request


def _body(content: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": "gemma",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": stream,
    }


async def _plain(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=body)
    total_ms = (time.perf_counter() - started) * 1000.0
    response.raise_for_status()
    data = response.json()
    return {
        "total_ms": total_ms,
        "ttft_ms": None,
        "text": data["choices"][0]["message"]["content"] or "",
        "prompt_tokens": data["usage"]["prompt_tokens"],
        "completion_tokens": data["usage"]["completion_tokens"],
        "finish_reason": data["choices"][0]["finish_reason"],
    }


async def _streamed(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    parts: list[str] = []
    first, finish, chunks = None, None, 0
    started = time.perf_counter()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = (json.loads(line[6:]).get("choices") or [{}])[0]
            text = (choice.get("delta") or {}).get("content")
            if text:
                first = first or time.perf_counter()
                parts.append(text)
                chunks += 1
            finish = choice.get("finish_reason") or finish
    ended = time.perf_counter()
    return {
        "total_ms": (ended - started) * 1000.0,
        "ttft_ms": ((first or ended) - started) * 1000.0,
        "text": "".join(parts),
        "chunks": chunks,
        "finish_reason": finish,
    }


async def _request(
    client: httpx.AsyncClient, server: procs.Server, content: str, max_tokens: int, stream: bool
) -> dict[str, Any]:
    # llama_cpp.server's Gemma format has no newline before <end_of_turn>; ours does (see the docstring).
    text = content if server.name == "agentloop" else content + "\n"
    body = _body(text, max_tokens, stream)
    call = _streamed if stream else _plain
    return {"arm": server.name, "stream": stream, **await call(client, server.url, body)}


async def _warm_up(client: httpx.AsyncClient, server: procs.Server) -> list[str]:
    """First requests, not measured. llama_cpp.server's very first request was seen to stall until its client
    gave up (then it serves normally), so a warm-up request that times out is retried; the JSON records it."""
    outcomes = []
    for timeout in (30.0, 120.0, 300.0):
        started = time.perf_counter()
        try:
            body = _body(counting_prompt(901), 8, False)
            response = await client.post(server.url + "/v1/chat/completions", json=body, timeout=timeout)
            response.raise_for_status()
        except httpx.TimeoutException:
            outcomes.append(f"timed out after {time.perf_counter() - started:.0f} s")
            continue
        outcomes.append(f"ok in {time.perf_counter() - started:.1f} s")
        return outcomes
    raise RuntimeError(f"{server.name} never answered its warm-up request: {outcomes}")


async def run(quick: bool) -> dict[str, Any]:
    rounds, max_tokens = (3, 32) if quick else (8, 64)
    model = model_path()
    samples: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="agentloop-bench-api-") as data_dir,
        procs.ours(Path(data_dir)) as ours,
        procs.llama_cpp_server(model) as raw,
    ):
        servers = [ours, raw]
        async with httpx.AsyncClient(timeout=300.0, auth=procs.ServerAuth(ours, raw)) as client:
            warmup = {server.name: await _warm_up(client, server) for server in servers}
            for round_ in range(rounds):
                content = "Keep counting: " + counting_prompt(100 * (round_ + 1) + 1)
                for stream in (False, True):
                    order = servers if (round_ + stream) % 2 == 0 else servers[::-1]
                    for server in order:
                        sample = await _request(client, server, content, max_tokens, stream)
                        samples.append({"round": round_, **sample})
        memory = {server.name: server.memory() for server in servers}
        startup = {server.name: round(server.startup_s, 2) for server in servers}
    return _result(samples, rounds, max_tokens, memory, startup, warmup)


def _pairs(samples: list[dict[str, Any]], stream: bool) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for s in samples:
        if s["stream"] == stream:
            by_round.setdefault(s["round"], {})[s["arm"]] = s
    return [(arms["agentloop"], arms["llama_cpp.server"]) for _, arms in sorted(by_round.items())]


def _result(
    samples: list[dict[str, Any]],
    rounds: int,
    max_tokens: int,
    memory: dict[str, dict[str, float]],
    startup: dict[str, float],
    warmup: dict[str, list[str]],
) -> dict[str, Any]:
    plain, streamed = _pairs(samples, False), _pairs(samples, True)
    same_text = all(o["text"].strip() == r["text"].strip() for o, r in plain + streamed)
    same_tokens = all(o["completion_tokens"] == r["completion_tokens"] for o, r in plain)
    same_prompt = all(o["prompt_tokens"] == r["prompt_tokens"] for o, r in plain)
    checks = {
        "same_text_each_round": same_text,
        "same_completion_tokens": same_tokens,
        "same_prompt_tokens": same_prompt,
        "tokens": [[o["completion_tokens"], r["completion_tokens"]] for o, r in plain],
        "prompt_tokens": [[o["prompt_tokens"], r["prompt_tokens"]] for o, r in plain],
    }
    valid = same_text and same_tokens
    rows, medians = [], {}
    for label, pairs in (("non-streaming", plain), ("streaming", streamed)):
        ratio = paired_ratio([o["total_ms"] for o, _ in pairs], [r["total_ms"] for _, r in pairs])
        ours_ms, raw_ms = median([o["total_ms"] for o, _ in pairs]), median([r["total_ms"] for _, r in pairs])
        medians[label] = {"agentloop_ms": ours_ms, "llama_cpp_server_ms": raw_ms, "ratio": ratio}
        passed = valid and ratio is not None and ratio <= 1 + TARGET_OVERHEAD
        rows.append(
            Row(
                f"api {label}: request time, ours / llama_cpp.server (lower is better)",
                "ms",
                ours_ms,
                raw_ms,
                ratio,
                f"<= {1 + TARGET_OVERHEAD:.2f}",
                passed,
            )
        )
    ttft = paired_ratio([o["ttft_ms"] for o, _ in streamed], [r["ttft_ms"] for _, r in streamed])
    rows.append(
        Row(
            "api streaming: time to first token, ours / llama_cpp.server",
            "ms",
            median([o["ttft_ms"] for o, _ in streamed]),
            median([r["ttft_ms"] for _, r in streamed]),
            ttft,
            "info",
            None,
        )
    )
    rows.append(
        Row(
            "api: server RSS after the run, ours / llama_cpp.server",
            "MB",
            memory["agentloop"]["rss_mb"],
            memory["llama_cpp.server"]["rss_mb"],
            memory["agentloop"]["rss_mb"] / memory["llama_cpp.server"]["rss_mb"],
            "info (ceiling 8 GB)",
            None,
        )
    )
    tokens = sorted({n for pair in checks["tokens"] for n in pair})
    verdict = (
        "both servers returned the same text and token counts in every round"
        if valid
        else "WARNING: the servers' outputs differ, so the timing comparison is not like for like"
    )
    return {
        "parameters": {
            "rounds": rounds,
            "max_tokens": max_tokens,
            "ours": "agentloop serve (uvicorn, FastAPI, embedded LlamaEngine), POST /v1/chat/completions",
            "baseline": "python -m llama_cpp.server --chat_format gemma, POST /v1/chat/completions",
            "client": "httpx.AsyncClient in the benchmark process, one request at a time, order alternating",
            "startup_s": startup,
            "warmup": warmup,
        },
        "samples": samples,
        "medians": medians,
        "memory_mb": memory,
        "checks": checks,
        "notes": [f"api: {verdict}; completion tokens per request: {tokens}."],
        "rows": rows,
    }

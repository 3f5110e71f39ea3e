"""concurrency_engine: N concurrent generations on LlamaEngine, batched (max_parallel=N) against serialized
(max_parallel=1), in the same run: `python -m bench.concurrency_engine [--quick]`.

Every round submits N requests at once (distinct counting prompts, greedy, no stop strings, exactly
`new_tokens` new tokens each) to one arm and waits for all of them; the arms alternate which goes first in
each round, so background load on the shared cores hits both. Reported per arm: aggregate tokens/s (all
new tokens / wall time of the round) and per-request latency (submission to last token, which includes the
time a serialized request waits in the queue) and time to first token. `run(quick)` returns the same shape
as the other benchmarks (parameters, samples, medians, checks, rows) for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import N_BATCH, N_CTX, N_THREADS, Row, machine_info, median, model_path, write_result
from bench.engine import counting_prompt


@dataclass
class Round:
    arm: str
    concurrency: int
    round: int
    wall_ms: float
    tokens: int
    latencies_ms: list[float]
    ttfts_ms: list[float]
    texts: list[str]
    finishes: list[str]

    @property
    def aggregate_tps(self) -> float:
        return self.tokens / (self.wall_ms / 1000.0)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "aggregate_tps": self.aggregate_tps}


async def _request(engine: Any, prompt: str, new_tokens: int) -> tuple[float, float, Any]:
    from agentloop.application.ports import Completion, GenerationRequest

    request = GenerationRequest(prompt, max_tokens=new_tokens, temperature=0.0, stop=())
    started = time.perf_counter()
    first: float | None = None
    completion: Any = None
    async for item in engine.stream(request):
        if isinstance(item, Completion):
            completion = item
            continue
        first = first or time.perf_counter()
    ended = time.perf_counter()
    assert completion is not None
    return (ended - started) * 1000.0, ((first or ended) - started) * 1000.0, completion


async def one_round(engine: Any, arm: str, prompts: list[str], new_tokens: int, round_: int) -> Round:
    """Submit every prompt at once to `engine` and wait for all replies."""
    started = time.perf_counter()
    results = await asyncio.gather(*(_request(engine, p, new_tokens) for p in prompts))
    wall = (time.perf_counter() - started) * 1000.0
    return Round(
        arm,
        len(prompts),
        round_,
        wall,
        sum(c.usage.completion_tokens for _, _, c in results),
        [latency for latency, _, _ in results],
        [ttft for _, ttft, _ in results],
        [c.text for _, _, c in results],
        [c.finish_reason for _, _, c in results],
    )


def _summary(rounds: list[Round]) -> dict[str, float]:
    latencies = [x for r in rounds for x in r.latencies_ms]
    return {
        "aggregate_tps": median([r.aggregate_tps for r in rounds]),
        "latency_median_ms": median(latencies),
        "latency_max_ms": max(latencies),
        "ttft_median_ms": median([x for r in rounds for x in r.ttfts_ms]),
        "wall_median_ms": median([r.wall_ms for r in rounds]),
    }


async def measure(
    concurrencies: tuple[int, ...] = (4, 8), new_tokens: int = 64, rounds: int = 3
) -> dict[str, Any]:
    """The comparison for each N: a serialized engine and a batched engine (max_parallel=N), same model and
    threads, rounds alternating which arm goes first. Returns samples, medians, checks and rows."""
    from agentloop.adapters.inference.llama import LlamaEngine

    path = model_path()
    serial = LlamaEngine(path, n_ctx=N_CTX, n_threads=N_THREADS, n_batch=N_BATCH, max_parallel=1)
    batched = {
        n: LlamaEngine(path, n_ctx=N_CTX, n_threads=N_THREADS, n_batch=N_BATCH, max_parallel=n)
        for n in concurrencies
    }
    engines = [serial, *batched.values()]
    for engine in engines:
        await engine.start()
    samples: dict[int, list[Round]] = {}
    try:
        for engine in engines:  # warm-up: first-call allocations, page cache; thrown away
            await one_round(engine, "warmup", [counting_prompt(901)], 8, -1)
        for n, parallel in batched.items():
            samples[n] = []
            for r in range(rounds):
                prompts = [counting_prompt(100 * (r * n + i + 1) + 1) for i in range(n)]
                arms = [("serial", serial), ("batched", parallel)]
                for name, engine in arms if r % 2 == 0 else arms[::-1]:
                    samples[n].append(await one_round(engine, name, prompts, new_tokens, r))
    finally:
        for engine in engines:
            await engine.close()
    result: dict[str, Any] = {
        "parameters": {
            "model": path.name,
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "n_batch": N_BATCH,
            "concurrencies": list(concurrencies),
            "rounds": rounds,
            "new_tokens": new_tokens,
            "sampling": "greedy (temperature 0), no stop strings",
            "serial": "LlamaEngine(max_parallel=1): one request at a time, the rest queue",
            "batched": "LlamaEngine(max_parallel=N): continuous batching, one llama_decode per step",
            "order": "interleaved; even rounds serial first, odd rounds batched first",
            "latency": "submission to last token, per request (includes queueing)",
        },
        "samples": {},
        "medians": {},
        "checks": {},
        "rows": [],
        "notes": [],
    }
    for n, runs in samples.items():
        by_arm = {arm: [r for r in runs if r.arm == arm] for arm in ("serial", "batched")}
        medians = {arm: _summary(rs) for arm, rs in by_arm.items()}
        pairs = list(zip(by_arm["serial"], by_arm["batched"], strict=True))
        medians["ratio"] = {
            "aggregate_tps": median([b.aggregate_tps / s.aggregate_tps for s, b in pairs]),
            "latency_median_ms": median([median(b.latencies_ms) / median(s.latencies_ms) for s, b in pairs]),
        }
        checks = {
            "all_generated_max_tokens": all(r.tokens == n * new_tokens for r in runs),
            "same_text_each_round": all(s.texts == b.texts for s, b in pairs),
        }
        key = f"n{n}"
        result["samples"][key] = [r.record() for r in runs]
        result["medians"][key] = medians
        result["checks"][key] = checks
        result["rows"] += _rows(n, medians)
        valid = checks["all_generated_max_tokens"] and checks["same_text_each_round"]
        result["notes"].append(
            f"concurrency {n}: batched/serial aggregate tokens/s = {medians['ratio']['aggregate_tps']:.2f}x; "
            + (
                "both arms generated the same tokens in every round"
                if valid
                else "WARNING: the arms did not generate the same tokens"
            )
        )
    return result


def _rows(n: int, medians: dict[str, dict[str, float]]) -> list[Row]:
    serial, batched, ratio = medians["serial"], medians["batched"], medians["ratio"]
    return [
        Row(
            f"concurrency {n}: aggregate tokens/s (batched/serial)",
            "tok/s",
            batched["aggregate_tps"],
            serial["aggregate_tps"],
            ratio["aggregate_tps"],
            "> 1",
            ratio["aggregate_tps"] > 1.0,
        ),
        Row(
            f"concurrency {n}: median request latency (batched/serial, lower is better)",
            "ms",
            batched["latency_median_ms"],
            serial["latency_median_ms"],
            ratio["latency_median_ms"],
            "info",
            None,
        ),
    ]


async def run(quick: bool) -> dict[str, Any]:
    if quick:
        return await measure((4,), new_tokens=32, rounds=2)
    return await measure((4, 8), new_tokens=64, rounds=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency_engine", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N=4 only, 32 tokens, 2 rounds")
    args = parser.parse_args(argv)
    machine = machine_info()
    started = time.perf_counter()
    result = asyncio.run(run(args.quick))
    result["parameters"]["quick"] = args.quick
    result["wall_s"] = round(time.perf_counter() - started, 1)
    path = write_result("concurrency_engine", result, machine)
    for note in result["notes"]:
        print(note)
    print(f"-> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

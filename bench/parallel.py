"""parallel: the concurrency benchmark's 10 chat sessions on servers that differ only in how many sequences
the embedded engine decodes together (`AGENTLOOP_MAX_PARALLEL`), side by side, for choosing its default.

    python -m bench.parallel [--arms 4,8,10] [--blocks 4] [--seconds 20]

Starts one `agentloop serve` per value at once; then, block after block (the order of the arms reversing
each block, so slow drifts of the machine hit every arm alike), the same `SESSIONS` sessions of
bench/concurrency.py run against each server for `--seconds`. Reports completion tokens/s, latency
percentiles, errors and RSS per arm, and each arm's per-block throughput ratio to the first arm (median);
writes bench/results/parallel/<commit>.json (not part of SUMMARY.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.common import commit_label, machine_info, write_side_result
from bench.concurrency import MAX_TOKENS, SESSIONS, alternate_blocks, summarize


def compare(blocks: dict[int, list[dict[str, Any]]], memory: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Each arm's summary, and its per-block tokens/s ratio to the first arm (median and every block)."""
    arms = list(blocks)
    summaries = {arm: summarize(arm_blocks) for arm, arm_blocks in blocks.items()}
    first = summaries[arms[0]]["block_tokens_per_s"]
    result: dict[str, Any] = {}
    for arm in arms:
        ratios = [t / f for t, f in zip(summaries[arm]["block_tokens_per_s"], first, strict=False) if f]
        summary = {key: value for key, value in summaries[arm].items() if key != "error_examples"}
        result[str(arm)] = {
            **summary,
            "errors_seen": summaries[arm]["error_examples"],
            "memory_mb": memory.get(arm, {}),
            f"ratios_to_{arms[0]}": ratios,
            f"median_ratio_to_{arms[0]}": statistics.median(ratios) if ratios else None,
        }
    return result


async def measure(arms: list[int], blocks: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agentloop-bench-parallel-") as data_dir:
        servers = {arm: procs.ours(Path(data_dir) / str(arm), max_parallel=arm) for arm in arms}
        try:
            for arm, server in servers.items():
                server.name = f"agentloop-max-parallel-{arm}"
                server.start()
            auth = procs.ServerAuth(*servers.values())
            limits = httpx.Limits(max_connections=SESSIONS * 2 * len(arms))
            async with httpx.AsyncClient(timeout=600.0, limits=limits, auth=auth) as client:
                runs = [(arm, servers[arm], True) for arm in arms]
                measured = await alternate_blocks(client, runs, blocks, seconds)
            memory = {arm: server.memory() for arm, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    return compare(measured, memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="4,8,10", help="comma-separated AGENTLOOP_MAX_PARALLEL values")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    arms = [int(value) for value in args.arms.split(",")]
    if len(arms) < 2 or min(arms) < 1 or len(set(arms)) != len(arms):
        parser.error("--arms needs two or more distinct values >= 1")
    measured = asyncio.run(measure(arms, args.blocks, args.seconds))
    for arm, result in measured.items():
        latency = result["latency_ms"]
        print(
            f"max_parallel {arm}: {result['tokens_per_s']:.1f} tokens/s "
            f"(median ratio to {arms[0]}: {result[f'median_ratio_to_{arms[0]}']:.2f}), "
            f"P50/P95 {latency['p50']:.0f}/{latency['p95']:.0f} ms, {result['errors']} errors, "
            f"RSS {result['memory_mb'].get('rss_mb', 0):.0f} MB"
        )
    machine = {**machine_info(), "loadavg_after": list(os.getloadavg())}
    parameters = {
        "arms": arms,
        "blocks": args.blocks,
        "block_s": args.seconds,
        "sessions": SESSIONS,
        "max_tokens": MAX_TOKENS,
        "server": "agentloop serve with AGENTLOOP_MAX_PARALLEL set per arm, otherwise default settings",
        "order": "blocks alternate the order of the arms",
    }
    document = {"name": "parallel", "machine": machine, "parameters": parameters, "arms": measured}
    write_side_result("parallel", commit_label(machine), document)


if __name__ == "__main__":
    main()

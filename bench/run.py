"""Run the benchmarks: `agentloop bench [--quick] [--only engine,api,...]` or `python -m bench.run` (same
options). Each benchmark compares against its baseline in the same run and writes bench/results/<name>.json;
then SUMMARY.md and the PNG charts are rebuilt from every result file present."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from bench import (
    agent,
    api,
    charts,
    concurrency,
    cycle,
    endpoints,
    engine,
    events,
    grammar,
    summary,
    swap,
    training,
)
from bench.common import REPO_ROOT, machine_info, write_result

Benchmark = Callable[[bool], Awaitable[dict[str, Any]]]

# In the order they run; `grammar` (a study of constrained decoding, 5-8 min) only runs when named.
BENCHMARKS: dict[str, Benchmark] = {
    "engine": engine.run,
    "api": api.run,
    "agent": agent.run,
    "concurrency": concurrency.run,
    "endpoints": endpoints.run,
    "events": events.run,
    "training": training.run,
    "swap": swap.run,
    "cycle": cycle.run,
    "grammar": grammar.run,
}
DEFAULT = [name for name in BENCHMARKS if name != "grammar"]


def parse_names(text: str) -> list[str]:
    """Benchmark names from a comma-separated list; ValueError naming any unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if not names:
        raise ValueError("no benchmark named")
    return names


def run_one(name: str, quick: bool) -> bool:
    started = time.perf_counter()
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    machine = machine_info()
    try:
        result = asyncio.run(BENCHMARKS[name](quick))
    except Exception:
        traceback.print_exc()
        print(
            f"[bench] {name} FAILED after {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True
        )
        return False
    result.setdefault("parameters", {})["quick"] = quick
    result["wall_s"] = round(time.perf_counter() - started, 1)
    path = write_result(name, result, machine)
    print(f"[bench] {name}: {result['wall_s']} s -> {path}", file=sys.stderr, flush=True)
    return True


def main(argv: list[str] | None = None, prog: str = "python -m bench.run") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="short runs (a smoke run; results are marked quick)"
    )
    parser.add_argument(
        "--only", default=",".join(DEFAULT), help="comma-separated, of: " + ", ".join(BENCHMARKS)
    )
    parser.add_argument("--readme", action="store_true", help="also rewrite the README's benchmark table")
    args = parser.parse_args(argv)
    try:
        names = parse_names(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    failed = [name for name in names if not run_one(name, args.quick)]
    print(summary.write())
    for path in charts.write_all(summary.load()):
        print(f"[bench] chart -> {path}", file=sys.stderr)
    if args.readme and not summary.update_readme(REPO_ROOT / "README.md"):
        print("[bench] README.md has no bench-table markers: not updated", file=sys.stderr)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

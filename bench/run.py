"""Run the benchmarks: `python -m bench.run [--quick] [--only engine,agent,grammar]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import agent, engine, grammar, summary
from bench.common import machine_info, write_result

BENCHMARKS: dict[str, Callable[[bool], Awaitable[dict[str, Any]]]] = {
    "engine": engine.run,
    "agent": agent.run,
    "grammar": grammar.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and tokens (a smoke run)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS)
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    for name in names:
        started = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        machine = machine_info()
        result = asyncio.run(BENCHMARKS[name](args.quick))
        result["parameters"]["quick"] = args.quick
        result["wall_s"] = round(time.perf_counter() - started, 1)
        path = write_result(name, result, machine)
        print(f"[bench] {name}: {result['wall_s']} s -> {path}", file=sys.stderr, flush=True)
    print(summary.write())
    return 0


if __name__ == "__main__":
    sys.exit(main())

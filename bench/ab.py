"""ab: the cheap routes of two commits side by side, for changes whose effect is smaller than the noise
between two separate `agentloop bench` runs on a shared machine.

    python -m bench.ab --base main~1 [--rounds 10] [--seconds 4]

Starts two `agentloop serve` processes at once, each with its own data dir and 50 stored conversations: one
runs the working tree, the other `--base` (checked out into a temporary git worktree and put first on
PYTHONPATH; same virtual environment, so dependency changes are not compared). Then, for every round and
route, wrk saturates each server in turn for `--seconds` (32 connections; the order alternates between
rounds), so slow drifts of the machine hit both arms alike. Reports each pair's ratio (working tree / base)
and their median; writes bench/results/ab/<base>..<head>.json (not part of SUMMARY.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import endpoints, procs
from bench.common import REPO_ROOT, commit_label, machine_info, write_side_result

ROUTES = {"auth_me": "/api/v1/auth/me", "conversations": "/api/v1/conversations?limit=20"}


@contextmanager
def worktree(ref: str) -> Iterator[tuple[Path, str]]:
    """`ref` checked out in a temporary worktree; its path and short commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="agentloop-ab-") as parent:
        path = Path(parent) / "tree"
        add = ["git", "worktree", "add", "--detach", str(path), commit]
        subprocess.run(add, cwd=REPO_ROOT, capture_output=True, check=True)
        try:
            yield path, commit
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT, check=False)


def server(data_dir: Path, tree: Path) -> procs.Server:
    """`agentloop serve` of the code in `tree` (its src/ first on the server's PYTHONPATH)."""
    arm = procs.ours(data_dir)
    arm.env["PYTHONPATH"] = str(tree / "src")
    return arm.start()


def compare(base: procs.Server, head: procs.Server, rounds: int, seconds: float) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {route: {"base": [], "head": []} for route in ROUTES}
    for index in range(rounds):
        for route, path in ROUTES.items():
            arms = [("base", base), ("head", head)]
            for name, arm in arms if index % 2 == 0 else arms[::-1]:
                endpoints.wrk(arm.url + path, 1.0, headers=arm.headers)  # warm-up
                measured = endpoints.wrk(arm.url + path, seconds, headers=arm.headers)
                if measured["errors"]:
                    raise RuntimeError(f"{name} {path}: {measured['errors']} failed requests")
                samples[route][name].append(measured["requests_per_s"])
    summary = {}
    for route, by_arm in samples.items():
        ratios = [h / b for b, h in zip(by_arm["base"], by_arm["head"], strict=True)]
        summary[route] = {
            "path": ROUTES[route],
            "requests_per_s": by_arm,
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "pairs_above_1": sum(r > 1 for r in ratios),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare the working tree against")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with (
        worktree(args.base) as (tree, commit),
        tempfile.TemporaryDirectory() as base_dir,
        tempfile.TemporaryDirectory() as head_dir,
    ):
        base, head = server(Path(base_dir), tree), server(Path(head_dir), REPO_ROOT)
        try:
            for arm in (base, head):
                asyncio.run(endpoints.seed_conversations(arm.url, arm.headers))
            measured = compare(base, head, args.rounds, args.seconds)
        finally:
            base.stop()
            head.stop()
    machine = {**machine_info(), "loadavg_after": list(os.getloadavg())}
    head_commit = commit_label(machine)
    for route, result in measured.items():
        print(
            f"{route}: median ratio {result['median_ratio']:.2f} ({result['pairs_above_1']} of {args.rounds} "
            f"pairs above 1); base {[round(x) for x in result['requests_per_s']['base']]} req/s, "
            f"head {[round(x) for x in result['requests_per_s']['head']]}"
        )
    document = {"base": commit, "head": head_commit, "rounds": args.rounds, "seconds": args.seconds}
    write_side_result("ab", f"{commit}..{head_commit}", {**document, "machine": machine, "routes": measured})


if __name__ == "__main__":
    main()

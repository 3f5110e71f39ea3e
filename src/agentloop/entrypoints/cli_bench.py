"""`agentloop bench`: run the side-by-side benchmarks of bench/ (ours against each baseline, same run).

The benchmarks live in the repository's bench/ folder, not in the installed package (they need baselines such
as llama_cpp.server and a plain transformers Trainer, and write bench/results/), so the command runs from a
source checkout: the current directory or the checkout an editable install points to.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from agentloop.entrypoints.cli_render import print_error

NOT_FOUND = (
    "the benchmarks live in the repository's bench/ folder, which is not installed: run `agentloop bench` "
    "inside a source checkout (or `python -m bench.run` there)"
)


def register(app: typer.Typer) -> None:
    """Add `bench` to the `agentloop` command."""
    app.command()(bench)


def checkout_candidates() -> list[Path]:
    """Folders that may hold bench/: the current directory, then the checkout of this source tree."""
    package = Path(__file__).resolve().parents[2]  # src/agentloop/entrypoints -> src
    return [Path.cwd(), package.parent]


def find_bench_runner(candidates: list[Path] | None = None) -> ModuleType | None:
    """Import bench.run from the first candidate checkout that has it; None when none has."""
    for root in candidates if candidates is not None else checkout_candidates():
        if (root / "bench" / "run.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module("bench.run")
    return None


def bench(
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Comma-separated benchmarks: engine, api, agent, concurrency, endpoints, events, training, "
            "swap, cycle, grammar [default: all but grammar].",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Short runs (concurrency 20 s instead of 2 min, fewer rounds).")
    ] = False,
    readme: Annotated[
        bool, typer.Option("--readme", help="Also rewrite the README's benchmark table from the results.")
    ] = False,
) -> None:
    """Benchmark ours against the baselines (raw llama.cpp, llama_cpp.server, plain Trainer + PEFT, serial
    serving); writes bench/results/*.json, SUMMARY.md and PNG charts. Runs from a source checkout."""
    runner = find_bench_runner()
    if runner is None:
        print_error(NOT_FOUND)
        raise typer.Exit(2)
    argv = ["--quick"] if quick else []
    if only is not None:
        try:
            runner.parse_names(only)
        except ValueError as exc:
            print_error(str(exc))
            raise typer.Exit(2) from exc
        argv += ["--only", only]
    if readme:
        argv.append("--readme")
    code = runner.main(argv, prog="agentloop bench")
    if code:
        raise typer.Exit(code)

"""What every benchmark shares: machine facts, the model file, timing statistics and the result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path.home() / ".cache" / "agentloop"

# One engine configuration for every arm of every benchmark, so only the code under test differs.
N_CTX = 4096
# AGENTLOOP_BENCH_THREADS overrides the threads of every arm at once (e.g. 1 on an oversubscribed machine,
# where llama.cpp's spinning thread barriers collapse when their threads are descheduled).
N_THREADS = int(os.environ.get("AGENTLOOP_BENCH_THREADS", "2"))
N_BATCH = 512


@dataclass(frozen=True)
class Row:
    """One line of SUMMARY.md. `ratio` is ours / baseline; `passed` is None where there is no target."""

    benchmark: str
    unit: str
    ours: float
    baseline: float | None
    ratio: float | None
    target: str
    passed: bool | None


def bench_settings(data_dir: Path, **overrides: Any) -> Any:
    """Settings with explicit engine values: AGENTLOOP_* variables or a .env must not change what is
    measured. (agentloop is imported here, not at module level, so `bench` loads without it.)"""
    from agentloop.settings import Settings

    return Settings(
        data_dir=data_dir,
        cache_dir=CACHE_DIR,
        database_url=None,
        model_path=None,
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        n_batch=N_BATCH,
        **overrides,
    )


def model_path() -> Path:
    from agentloop.adapters.model_files import ensure_model

    return ensure_model(None, CACHE_DIR).path


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(ours: float, baseline: float) -> float | None:
    return ours / baseline if baseline else None


def machine_info() -> dict[str, Any]:
    import llama_cpp

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        # Code changes only: results a run has already written (bench/results, README's table) do not count.
        "git_dirty": bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!README.md")
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_before": list(os.getloadavg()),
        "bench_threads": N_THREADS,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def write_result(name: str, result: dict[str, Any], machine: dict[str, Any]) -> Path:
    machine = {**machine, "loadavg_after": list(os.getloadavg())}
    rows = [asdict(row) for row in result.pop("rows")]
    document = {"name": name, "machine": machine, **result, "rows": rows}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def commit_label(machine: dict[str, Any]) -> str:
    """The measured tree's commit, with `-dirty` when it had uncommitted changes."""
    return f"{machine['git_commit']}{'-dirty' if machine['git_dirty'] else ''}"


def write_side_result(folder: str, stem: str, document: dict[str, Any]) -> Path:
    """A side-by-side tool's result (bench.ab, bench.parallel) as results/<folder>/<stem>.json: a folder of
    its own, since SUMMARY.md reads every results/*.json as a benchmark with rows."""
    path = RESULTS_DIR / folder / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO_ROOT)}")
    return path

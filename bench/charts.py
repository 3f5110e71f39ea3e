"""PNG charts from bench/results/*.json (matplotlib, headless): every ratio against its target, and a few
per-benchmark views. Missing results are skipped; matplotlib missing skips all charts with a message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

LOWER_IS_BETTER = re.compile(r"lower is better|request time|time to first|overhead|RSS|wall time", re.I)


def target_value(target: str) -> float | None:
    """The number in a target such as '>= 0.95', '<= 1.05' or '> 1 (batching gain)'; None for 'info'."""
    match = re.match(r"\s*[<>]=?\s*([0-9.]+)\s*(?:\(|$)", target)
    return float(match.group(1)) if match else None


def ratio_rows(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that compare against a baseline of the same run (a ratio and a real baseline value)."""
    return [
        row
        for doc in documents
        for row in doc["rows"]
        if row.get("ratio") is not None
        and row.get("baseline") is not None
        and not any(word in row["benchmark"] for word in ("seed", "paced", "share"))
    ]


def write_all(documents: list[dict[str, Any]], out_dir: Path = RESULTS_DIR) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print("[bench] matplotlib is not installed: no charts (pip install -e '.[bench]')")
        return []
    by_name = {doc["name"]: doc for doc in documents}
    written = [_ratios(documents, out_dir / "ratios.png")]
    for name, draw in (("concurrency", _concurrency), ("training", _training), ("endpoints", _endpoints)):
        if name in by_name:
            written.append(draw(by_name[name], out_dir / f"{name}.png"))
    return [path for path in written if path is not None]


def _ratios(documents: list[dict[str, Any]], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    rows = ratio_rows(documents)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(15, 0.4 * len(rows) + 1.5))
    labels = [row["benchmark"] for row in rows]
    values = [row["ratio"] for row in rows]
    colors = [
        "#4c9a2a" if row["passed"] else "#c0392b" if row["passed"] is False else "#7f8c8d" for row in rows
    ]
    ax.barh(range(len(rows)), values, color=colors)
    for index, row in enumerate(rows):
        target = target_value(row["target"])
        if target is not None:
            ax.plot([target, target], [index - 0.4, index + 0.4], color="black", linewidth=2)
        ax.text(values[index], index, f" {values[index]:.2f}", va="center", fontsize=8)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ours / baseline (black tick: target; green pass, red fail, grey info)")
    ax.set_title("Ratios against the baseline of the same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _concurrency(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    summary = doc["summary"]
    arms = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(arms, [summary[a]["tokens_per_s"] for a in arms], color="#2e86c1")
    left.set_ylabel("completion tokens/s (all sessions)")
    left.set_title("Throughput")
    width = 0.8 / 3
    for offset, key in enumerate(("p50", "p95", "p99")):
        xs = [i + (offset - 1) * width for i in range(len(arms))]
        right.bar(xs, [summary[a]["latency_ms"][key] for a in arms], width, label=key.upper())
    right.set_xticks(range(len(arms)), arms)
    right.set_ylabel("request latency, ms")
    right.set_title("Latency percentiles")
    right.legend()
    fig.suptitle(f"{doc['parameters']['sessions']} chat sessions at once vs one request at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _training(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    samples = doc["samples"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, color in (("ours", "#4c9a2a"), ("plain", "#7f8c8d")):
        runs = [s for s in samples if s["arm"] == arm and "tokens_per_s" in s]  # a failed arm has no bars
        left.bar([f"{arm} r{s['round']}" for s in runs], [s["tokens_per_s"] for s in runs], color=color)
        right.bar([f"{arm} r{s['round']}" for s in runs], [s["peak_rss_mb"] for s in runs], color=color)
    left.set_ylabel("tokens/s in optimizer steps")
    left.set_title("Training throughput")
    right.set_ylabel("peak RSS, MB")
    right.axhline(8192, color="#c0392b", linestyle="--", label="8 GB ceiling")
    right.set_title("Training peak memory")
    right.legend()
    fig.suptitle("Our LoRA trainer vs transformers Trainer + PEFT")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _endpoints(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    measured = doc["measured"]
    routes = list(measured)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(routes, [measured[r]["saturation"]["requests_per_s"] for r in routes], color="#2e86c1")
    left.axhline(100, color="#c0392b", linestyle="--", label="seed 100 req/s")
    left.axhline(1000, color="#4c9a2a", linestyle=":", label="aim 1000 req/s")
    left.set_ylabel("requests/s (wrk, saturated)")
    left.legend()
    right.bar(routes, [measured[r]["paced"]["latency_ms"]["p95"] for r in routes], color="#8e44ad")
    right.axhline(100, color="#c0392b", linestyle="--", label="seed P95 100 ms")
    right.set_ylabel("P95 ms at 100 req/s")
    right.legend()
    fig.suptitle("Cheap endpoints under load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

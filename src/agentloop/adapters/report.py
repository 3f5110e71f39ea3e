"""The `improve` report on disk: JSON, Markdown and a PNG chart of accuracy per version (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentloop.application.learning.improve import markdown

JSON_FILE = "improve.json"
MARKDOWN_FILE = "improve.md"
CHART_FILE = "improve.png"


def write_report(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the three files into `out_dir` (created if needed) and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_FILE, "markdown": out_dir / MARKDOWN_FILE, "chart": out_dir / CHART_FILE}
    paths["json"].write_text(
        json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    draw_chart(report, paths["chart"])
    paths["markdown"].write_text(markdown(report, CHART_FILE), encoding="utf-8")
    return paths


def draw_chart(report: Mapping[str, Any], path: Path) -> None:
    """Overall and per-suite held-out accuracy for each measured version (base first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = list(report.get("versions", []))
    labels = [str(v["version"]) for v in versions]
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        suites = sorted({name for v in versions for name in v["suites"]})
        for name in suites:
            values = [100 * v["suites"].get(name, float("nan")) for v in versions]
            axes.plot(labels, values, marker=".", linewidth=1, alpha=0.6, label=name)
        overall = [100 * v["accuracy"] for v in versions]
        axes.plot(labels, overall, marker="o", linewidth=3, color="black", label="overall")
        for x, y in zip(labels, overall, strict=True):
            axes.annotate(f"{y:.1f}%", (x, y), textcoords="offset points", xytext=(0, 8), ha="center")
        axes.set_ylim(0, 105)
        axes.set_ylabel("held-out task accuracy (%)")
        axes.set_xlabel("model version (candidate of each cycle)")
        axes.set_title("agentloop improve: accuracy per version, no human labels")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower right", ncols=2)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)

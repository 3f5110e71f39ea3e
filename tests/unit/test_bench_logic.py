"""The pure logic of the benchmark harness (bench/): statistics, targets, summary and README rendering, and
the `agentloop bench` command's wiring. Benchmarks themselves are not tests: nothing here is timed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from agentloop.entrypoints.cli import app
from agentloop.entrypoints.cli_bench import find_bench_runner

REPO_ROOT = Path(__file__).resolve().parents[2]
assert find_bench_runner([REPO_ROOT]) is not None  # puts the checkout's bench/ on sys.path

from bench import charts, stats, summary  # noqa: E402

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert stats.percentile(values, 0) == 10.0
    assert stats.percentile(values, 100) == 40.0
    assert stats.percentile(values, 50) == 25.0
    assert stats.percentile(values, 95) == pytest.approx(38.5)
    assert stats.percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_values_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        stats.percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        stats.percentile([1.0], 101)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotonic_and_bounded(values: list[float], p: float, q: float) -> None:
    low, high = sorted((p, q))
    assert min(values) <= stats.percentile(values, low) <= stats.percentile(values, high) <= max(values)


@given(st.lists(finite, min_size=1, max_size=50))
def test_p50_is_the_median(values: list[float]) -> None:
    assert stats.percentile(values, 50) == pytest.approx(statistics.median(values), abs=1e-6)


def test_latency_summary_and_paired_ratio() -> None:
    summary_ = stats.latency_summary([float(n) for n in range(1, 101)])
    assert summary_["count"] == 100
    assert summary_["p50"] == pytest.approx(50.5)
    assert summary_["p99"] == pytest.approx(99.01)
    assert summary_["max"] == 100.0
    assert stats.latency_summary([])["count"] == 0
    # Per-round ratios, then the median: 2/1, 3/3, 8/4 -> median 2.0; a zero baseline round is skipped.
    assert stats.paired_ratio([2.0, 3.0, 8.0, 5.0], [1.0, 3.0, 4.0, 0.0]) == 2.0
    assert stats.paired_ratio([1.0], [0.0]) is None


@pytest.mark.parametrize(
    ("target", "value"),
    [
        (">= 0.95", 0.95),
        ("<= 1.05", 1.05),
        ("> 1 (batching gain)", 1.0),
        (">= 1.0 (aim 1.5)", 1.0),
        ("info", None),
    ],
)
def test_target_value(target: str, value: float | None) -> None:
    assert charts.target_value(target) == value


def _document(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "parameters": {"quick": True},
        "wall_s": 12.3,
        "machine": {
            "cpu_model": "Test CPU",
            "usable_cores": 2,
            "python": "3.11",
            "llama_cpp_python": "0.3.36",
            "git_commit": "abc123",
            "git_dirty": False,
            "date": "2026-11-25T18:00:00+00:00",
            "loadavg_before": [1.0, 1.0, 1.0],
            "loadavg_after": [2.0, 1.0, 1.0],
        },
        "rows": [
            {
                "benchmark": f"{name}: tokens/s",
                "unit": "tok/s",
                "ours": 21.0,
                "baseline": 20.0,
                "ratio": 1.05,
                "target": ">= 0.95",
                "passed": True,
            },
            {
                "benchmark": f"{name}: failed requests",
                "unit": "",
                "ours": 0.0,
                "baseline": None,
                "ratio": None,
                "target": "0",
                "passed": True,
            },
        ],
    }


def test_summary_table_and_readme_block() -> None:
    lines = summary.table([_document("engine")])
    assert lines[2] == "| engine: tokens/s | 21.0 tok/s | 20.0 tok/s | 1.05 | >= 0.95 | PASS |"
    assert lines[3] == "| engine: failed requests | 0 | — | — | 0 | PASS |"
    block = summary.render_readme_block([_document("engine"), _document("api")])
    assert "quick runs, 2026-11-25 to 2026-11-25, Test CPU, 2 cores" in block
    assert "| api: tokens/s |" in block
    assert charts.ratio_rows([_document("engine")])[0]["ratio"] == 1.05


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench-table:start -->\nold\n<!-- bench-table:end -->\noutro\n")
    assert summary.update_readme(readme, [_document("engine")])
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench-table:start -->\nGenerated from")
    assert "old" not in text and text.endswith("<!-- bench-table:end -->\noutro\n")
    assert "| engine: tokens/s |" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not summary.update_readme(plain, [_document("engine")])


def test_agentloop_bench_help_names_the_benchmarks() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "--quick" in result.output and "--only" in result.output and "concurrency" in result.output


def test_agentloop_bench_refuses_an_unknown_benchmark_before_running_any() -> None:
    result = CliRunner().invoke(app, ["bench", "--only", "engine,nonsense"])
    assert result.exit_code == 2
    assert "unknown benchmark(s): nonsense" in result.output


def test_bench_runner_is_not_found_outside_a_checkout(tmp_path: Path) -> None:
    assert find_bench_runner([tmp_path]) is None


def test_training_chart_leaves_out_a_failed_arm(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    doc: dict[str, Any] = {
        "samples": [
            {"round": 0, "arm": "ours", "tokens_per_s": 107.0, "peak_rss_mb": 6316.0},
            {"round": 0, "arm": "plain", "error": "RuntimeError: can't allocate memory"},
        ]
    }
    path = charts._training(doc, tmp_path / "training.png")
    assert path.stat().st_size > 0


def test_ab_pairs_alternate_their_order_and_report_each_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from bench import ab, endpoints

    calls: list[str] = []

    def fake_wrk(url: str, seconds: float, **_: object) -> dict[str, float]:
        calls.append(url)
        return {"requests_per_s": 200.0 if url.startswith("http://head") else 100.0, "errors": 0}

    monkeypatch.setattr(endpoints, "wrk", fake_wrk)
    base = SimpleNamespace(url="http://base", headers={})
    head = SimpleNamespace(url="http://head", headers={})
    result = ab.compare(base, head, rounds=2, seconds=1.0)  # type: ignore[arg-type]
    assert result["conversations"]["ratios"] == [2.0, 2.0]
    assert result["auth_me"]["median_ratio"] == 2.0 and result["auth_me"]["pairs_above_1"] == 2
    measured = calls[1::2]  # every measurement follows its warm-up
    assert [url.split("/")[2] for url in measured[:2]] == ["base", "head"]  # round 0: base first
    assert [url.split("/")[2] for url in measured[4:6]] == ["head", "base"]  # round 1: head first


def test_parallel_compares_every_arm_block_by_block_with_the_first() -> None:
    from bench import parallel

    def block(tokens: int, wall_s: float, failed: int = 0) -> dict[str, Any]:
        ok = [{"ok": True, "tokens": tokens, "ms": 100.0, "error": None}]
        bad = [{"ok": False, "tokens": 0, "ms": 5.0, "error": "HTTP 500"}] * failed
        return {"wall_s": wall_s, "samples": ok + bad}

    measured = {4: [block(100, 10.0), block(120, 10.0)], 8: [block(130, 10.0), block(120, 10.0, failed=1)]}
    result = parallel.compare(measured, {8: {"rss_mb": 1060.0}})
    assert list(result) == ["4", "8"]
    assert result["4"]["ratios_to_4"] == [1.0, 1.0]
    assert result["8"]["ratios_to_4"] == pytest.approx([1.3, 1.0])
    assert result["8"]["median_ratio_to_4"] == pytest.approx(1.15)
    assert result["8"]["errors"] == 1 and result["8"]["errors_seen"] == ["HTTP 500"]
    assert result["8"]["memory_mb"] == {"rss_mb": 1060.0} and result["4"]["memory_mb"] == {}


def test_every_result_file_summary_reads_has_a_name_and_rows() -> None:
    """SUMMARY.md reads every bench/results/*.json: side-by-side tools (bench.ab, bench.parallel) write to
    folders of their own, or `agentloop bench` would fail on their files at its very end."""
    from bench.common import RESULTS_DIR

    for path in sorted(RESULTS_DIR.glob("*.json")):
        document = json.loads(path.read_text())
        assert {"name", "rows"} <= set(document), path.name
    assert summary.render().startswith("# Benchmark summary")


def test_side_results_go_to_a_folder_of_their_own_named_by_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path)
    label = common.commit_label({"git_commit": "abc1234", "git_dirty": True})
    assert (
        label == "abc1234-dirty"
        and common.commit_label({"git_commit": "abc1234", "git_dirty": False}) == "abc1234"
    )
    path = common.write_side_result("parallel", label, {"arms": {"4": 1.0}})
    assert path == tmp_path / "results" / "parallel" / "abc1234-dirty.json"
    assert json.loads(path.read_text()) == {"arms": {"4": 1.0}}
    assert list((tmp_path / "results").glob("*.json")) == []  # nothing SUMMARY.md would read as a benchmark
    assert "wrote results/parallel/abc1234-dirty.json" in capsys.readouterr().out


async def test_blocks_alternate_the_arms_and_warm_each_server_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import concurrency

    calls: list[tuple[str, int, float, bool]] = []

    async def block(_client: Any, server: Any, sessions: list[Any], seconds: float, at_once: bool) -> dict:
        calls.append((server, len(sessions), seconds, at_once))
        return {"wall_s": seconds, "samples": []}

    monkeypatch.setattr(concurrency, "_block", block)
    arms = [("concurrent", "a", True), ("unbatched", "b", True), ("serial", "a", False)]
    results = await concurrency.alternate_blocks(None, arms, blocks=2, block_s=5.0)  # type: ignore[arg-type]

    n = concurrency.SESSIONS
    assert calls[:2] == [("a", 1, 0.1, False), ("b", 1, 0.1, False)]  # one warm-up per server
    first = [("a", n, 5.0, True), ("b", n, 5.0, True), ("a", n, 5.0, False)]
    assert calls[2:] == [*first, *reversed(first)]  # the second round runs the arms in reverse order
    assert list(results) == ["concurrent", "unbatched", "serial"]
    assert [b["block"] for b in results["serial"]] == [0, 1]

"""Pure statistics for the benchmarks: percentiles, latency summaries, per-round ratios. No I/O."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile {p} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int]:
    """Count, mean, P50/P95/P99 and max of latencies in milliseconds (zeros when there are none)."""
    if not values_ms:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "count": len(values_ms),
        "mean": float(statistics.fmean(values_ms)),
        "p50": percentile(values_ms, 50),
        "p95": percentile(values_ms, 95),
        "p99": percentile(values_ms, 99),
        "max": float(max(values_ms)),
    }


def paired_ratio(ours: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Median of per-round ratios ours[i] / baseline[i]; rounds with a zero baseline are skipped."""
    ratios = [o / b for o, b in zip(ours, baseline, strict=True) if b]
    return float(statistics.median(ratios)) if ratios else None

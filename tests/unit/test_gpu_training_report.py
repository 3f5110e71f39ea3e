"""bench/gpu_training: steady-state tokens/s and the ratio rows its report (and SUMMARY.md) are built from."""

from __future__ import annotations

from typing import Any

import pytest
from bench.gpu_training import rows, steady


def test_steady_leaves_out_the_warm_up_steps() -> None:
    kept = steady([100, 100, 200, 200], [10.0, 1.0, 1.0, 1.0], warm=2)
    assert (kept["steps"], kept["left_out"], kept["tokens"]) == (2, 2, 400)
    assert kept["tokens_per_s"] == 200.0
    # No more steps than the warm-up: all of them count.
    assert steady([100, 100], [1.0, 1.0], warm=2)["tokens_per_s"] == 100.0
    assert steady([], [], warm=2)["tokens_per_s"] is None


def arm(name: str, tokens_per_s: float, memory_mb: float, **extra: Any) -> dict[str, Any]:
    steady_rate = {"tokens_per_s": tokens_per_s}
    return {"arm": name, "steady": steady_rate, "cuda_max_allocated_mb": memory_mb, **extra}


def test_rows_compare_each_arm_with_its_baseline_and_judge_the_targets() -> None:
    qlora = arm("ours_qlora", 23_000, 2_100, qlora=True)
    document: dict[str, Any] = {
        "arms": [
            arm("plain_bf16", 40_000, 35_000),
            arm("plain_bf16_gc", 27_000, 28_000, error="killed"),
            arm("ours_bf16", 28_000, 1_750),
            qlora,
        ]
    }
    by_label = {row["benchmark"]: row for row in rows(document)}
    speed = by_label["gpu training: tokens/s, ours bf16 LoRA / plain Trainer + PEFT bf16"]
    assert speed["ratio"] == pytest.approx(0.7) and speed["passed"] is False
    memory = by_label["gpu training: peak CUDA memory, ours bf16 / plain bf16 (lower is better)"]
    assert memory["ratio"] == pytest.approx(0.05) and memory["passed"] is True
    assert by_label["gpu training: tokens/s, ours QLoRA NF4 / plain bf16"]["passed"] is None
    # The failed arm leaves its rows out.
    assert len(by_label) == 4 and not any("checkpointing" in label for label in by_label)
    qlora["qlora"] = False  # bitsandbytes did not import: the label says so
    assert any("ran without bitsandbytes" in row["benchmark"] for row in rows(document))


def test_the_notes_say_what_our_trainer_chose_about_activations() -> None:
    from bench.gpu_training import _ours_checkpointing

    chose = "gradient checkpointing off (auto): activations up to 17.2 GiB, 139.0 GiB free on the GPU"
    document: dict[str, Any] = {
        "arms": [
            arm("ours_bf16", 1, 1, runner="ours", trainer_notes=[chose]),
            arm("plain_bf16", 1, 1, runner="plain"),
        ]
    }
    assert f"ours_bf16: {chose}" in _ours_checkpointing(document)
    document["arms"][0]["trainer_notes"] = []  # a run from before the trainer said
    assert "always on CUDA before stop 14" in _ours_checkpointing(document)

"""Training data preparation without torch: loss masking, truncation, length-grouped batching, the spec's
JSON round trip."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentloop.adapters.training.batches import (
    IGNORE_INDEX,
    Schedule,
    collate,
    encode,
    padding_fraction,
    plan_batches,
    read_examples,
)
from agentloop.adapters.training.spec import TrainingError, TrainResult, TrainSpec

BOS = 2


def test_prompt_tokens_are_masked_and_completion_tokens_are_targets() -> None:
    encoded = encode([BOS, 10, 11, 12], [20, 21], max_seq_len=16)
    assert encoded.input_ids == (BOS, 10, 11, 12, 20, 21)
    assert encoded.labels == (IGNORE_INDEX,) * 4 + (20, 21)
    assert not encoded.truncated


def test_a_long_prompt_loses_tokens_from_its_left_but_keeps_bos() -> None:
    encoded = encode([BOS, 10, 11, 12, 13, 14], [20, 21], max_seq_len=5)
    assert encoded.input_ids == (BOS, 13, 14, 20, 21)
    assert encoded.labels == (IGNORE_INDEX,) * 3 + (20, 21)
    assert encoded.truncated


def test_a_completion_longer_than_the_window_is_cut_at_its_end() -> None:
    encoded = encode([BOS, 10, 11], [20, 21, 22, 23, 24], max_seq_len=4)
    assert encoded.input_ids == (BOS, 20, 21, 22)
    assert encoded.labels == (IGNORE_INDEX, 20, 21, 22)


def test_an_empty_completion_is_refused() -> None:
    with pytest.raises(TrainingError):
        encode([BOS, 10], [], max_seq_len=8)


def test_collate_pads_to_the_longest_in_the_batch_only() -> None:
    examples = [encode([BOS, 10], [20], 64), encode([BOS, 10, 11, 12], [20, 21], 64)]
    batch = collate(examples, [0, 1], pad_id=0)
    assert [len(row) for row in batch.input_ids] == [6, 6]
    assert batch.input_ids[0] == [BOS, 10, 20, 0, 0, 0]
    assert batch.attention_mask[0] == [1, 1, 1, 0, 0, 0]
    assert batch.labels[0] == [IGNORE_INDEX, IGNORE_INDEX, 20, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert (batch.tokens, batch.padded_tokens, batch.target_tokens) == (9, 12, 3)


def _lengths(n: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 500) for _ in range(n)]


@pytest.mark.parametrize(("n", "batch_size"), [(1, 4), (7, 3), (100, 8), (257, 16)])
def test_every_example_is_in_exactly_one_batch(n: int, batch_size: int) -> None:
    plan = plan_batches(_lengths(n), batch_size, seed=3)
    seen = sorted(i for batch in plan for i in batch)
    assert seen == list(range(n))
    assert all(1 <= len(batch) <= batch_size for batch in plan)


def test_length_grouping_pads_less_than_random_batching() -> None:
    lengths, batch_size = _lengths(512), 8
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_plan = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    grouped = padding_fraction(plan_batches(lengths, batch_size, seed=0), lengths)
    assert grouped < padding_fraction(random_plan, lengths) / 3


def test_plans_are_deterministic_for_a_seed_and_differ_across_seeds() -> None:
    lengths = _lengths(200)
    assert plan_batches(lengths, 4, seed=1) == plan_batches(lengths, 4, seed=1)
    assert plan_batches(lengths, 4, seed=1) != plan_batches(lengths, 4, seed=2)


def test_the_plan_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "from agentloop.adapters.training.batches import plan_batches;"
        "print(plan_batches([5, 9, 3, 7, 1, 8, 2], 2, seed=4))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1


def test_schedule_walks_epochs_and_resumes_at_any_step() -> None:
    lengths = _lengths(10)
    schedule = Schedule(lengths, batch_size=4, seed=0)
    assert schedule.batches_per_epoch == 3
    steps = [schedule.at(step) for step in range(6)]
    assert sorted(i for batch in steps[:3] for i in batch) == list(range(10))
    assert sorted(i for batch in steps[3:] for i in batch) == list(range(10))
    assert steps[3:] != steps[:3]
    assert schedule.epochs(4) == pytest.approx(4 / 3)
    fresh = Schedule(lengths, batch_size=4, seed=0)
    assert fresh.at(4) == steps[4]


def test_read_examples_ignores_other_fields_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": "p1", "completion": "c1", "source": "feedback"}, {"prompt": "p2", "completion": "c2"}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert [(e.prompt, e.completion) for e in read_examples(path)] == [("p1", "c1"), ("p2", "c2")]


@pytest.mark.parametrize("line", ["not json", '{"prompt": "p"}', '{"prompt": "p", "completion": ""}', "[1]"])
def test_read_examples_names_the_bad_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n' + line + "\n")
    with pytest.raises(TrainingError, match=r"train\.jsonl:2"):
        read_examples(path)


def test_spec_and_result_survive_json(tmp_path: Path) -> None:
    spec = TrainSpec(
        base=tmp_path / "base.gguf",
        base_sha256="ab" * 32,
        train_file=tmp_path / "train.jsonl",
        validation_file=None,
        output_dir=tmp_path / "out",
        target_modules=("q_proj", "v_proj"),
        threads=2,
    )
    assert TrainSpec.from_json(spec.to_json()) == spec
    result = TrainResult(
        status="completed",
        steps=4,
        first_train_loss=2.0,
        last_train_loss=0.5,
        validation_loss=0.4,
        tokens_seen=100,
        tokens_per_s=10.0,
        peak_rss_mb=2000.0,
        duration_s=30.0,
        device="cpu",
        qlora=False,
        peft_dir=tmp_path / "out" / "peft",
        notes=("a note",),
    )
    assert TrainResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_spec_refuses_nonsense() -> None:
    with pytest.raises(TrainingError, match="max_steps"):
        TrainSpec(Path("b"), "x", Path("t"), None, Path("o"), max_steps=0)


def test_the_package_top_level_does_not_import_torch() -> None:
    code = "import sys, agentloop.adapters.training.run; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@given(
    st.lists(st.integers(min_value=2, max_value=60), min_size=1, max_size=12),
    st.integers(min_value=1, max_value=200),
)
def test_parts_hold_every_row_once_within_the_budget(lengths: list[int], budget: int) -> None:
    examples = [encode([BOS, *range(10, 10 + n - 1)], [20], 64) for n in lengths]
    batch = collate(examples, list(range(len(examples))), pad_id=0)
    parts = batch.parts(budget)
    assert sorted(i for part in parts for i in part.indices) == list(range(len(examples)))
    assert sum(p.tokens for p in parts) == batch.tokens
    assert sum(p.target_tokens for p in parts) == batch.target_tokens
    for part in parts:
        assert part.padded_tokens <= budget or len(part.indices) == 1
        widths = {len(row) for rows in (part.input_ids, part.attention_mask, part.labels) for row in rows}
        assert widths == {max(map(sum, part.attention_mask))}  # padded to its own longest row only
    assert batch.parts(None) == [batch] and batch.parts(batch.padded_tokens) == [batch]

"""A batch cut into parts (`max_batch_tokens`) trains exactly as the whole batch: same loss, same update."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from agentloop.adapters.training.batches import collate, encode
from agentloop.adapters.training.lora import (
    Placement,
    RunState,
    TrainLoop,
    activation_bytes,
    make_optimizer,
    needs_checkpointing,
    pass_shape,
    wrap_lora,
)
from agentloop.adapters.training.spec import TrainingError, TrainSpec


def tiny_loop(spec: TrainSpec) -> TrainLoop:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
    )
    model = wrap_lora(Gemma3ForCausalLM(config), spec, Placement("cpu", qlora=False))
    for name, parameter in model.named_parameters():  # LoRA B starts at zero: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    optimizer, scheduler = make_optimizer(model, spec)
    return TrainLoop(spec, model, optimizer, scheduler, RunState(), pad_id=0, device="cpu")


def lora_weights(loop: TrainLoop) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in loop.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("budget", [12, 30])
def test_parts_make_the_same_step_as_the_whole_batch(tmp_path: Path, budget: int) -> None:
    spec = TrainSpec(
        Path("base"), "0", tmp_path / "t.jsonl", None, tmp_path, max_steps=4, lora_r=4, lora_alpha=8
    )
    examples = [encode([2, *range(5, 5 + n)], [40, 41, 42], 64) for n in (3, 9, 6, 12)]
    batch = collate(examples, [0, 1, 2, 3], pad_id=0)
    assert len(batch.parts(budget)) > 1
    whole, cut = tiny_loop(spec), tiny_loop(replace(spec, max_batch_tokens=budget))
    whole.step(batch)
    cut.step(batch)
    assert cut.state.last_loss == pytest.approx(whole.state.last_loss, rel=1e-5)
    assert cut.state.padded_tokens < whole.state.padded_tokens
    for name, weight in lora_weights(whole).items():
        torch.testing.assert_close(lora_weights(cut)[name], weight, rtol=1e-5, atol=1e-6)


# --- gradient checkpointing: when, and that it changes nothing but memory ----------------------------------


def base_spec(tmp_path: Path, **changes: object) -> TrainSpec:
    spec = TrainSpec(
        Path("base"), "0", tmp_path / "t.jsonl", None, tmp_path, max_steps=4, lora_r=4, lora_alpha=8
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def test_auto_checkpoints_on_cuda_only_when_activations_crowd_the_gpu(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    gib = 2**30
    assert not needs_checkpointing(spec, "cpu", 100 * gib, 0)  # the CPU path keeps its activations
    assert not needs_checkpointing(spec, "cuda", 3 * gib, 80 * gib)  # fits in half of what is free
    assert needs_checkpointing(spec, "cuda", 5 * gib, 8 * gib)  # more than half of an 8 GiB card
    assert needs_checkpointing(replace(spec, gradient_checkpointing="on"), "cpu", 0, 0)
    assert not needs_checkpointing(replace(spec, gradient_checkpointing="off"), "cuda", 5 * gib, 1)
    with pytest.raises(TrainingError):
        base_spec(tmp_path, gradient_checkpointing="sometimes")


def test_activation_estimate_grows_with_the_pass(tmp_path: Path) -> None:
    config = Gemma3TextConfig(hidden_size=640, num_hidden_layers=18, num_attention_heads=4, head_dim=256)
    one = activation_bytes(config, 1, 512)
    assert activation_bytes(config, 8, 512) == 8 * one
    assert activation_bytes(config, 1, 1024) > 2 * one  # attention scores grow with the square
    # the gpu_training benchmark's pass (8 x 2048 tokens of the 270M base): GiBs, not the H200's 140
    assert (
        activation_bytes(config, *pass_shape(base_spec(tmp_path, batch_size=8, max_seq_len=2048))) > 4 * 2**30
    )
    assert pass_shape(base_spec(tmp_path, batch_size=8, max_seq_len=512, max_batch_tokens=1024)) == (2, 512)
    assert pass_shape(base_spec(tmp_path, batch_size=8, max_seq_len=512, max_batch_tokens=100)) == (1, 512)


def test_forced_checkpointing_trains_the_same_step(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    examples = [encode([2, *range(5, 5 + n)], [40, 41, 42], 64) for n in (3, 9)]
    batch = collate(examples, [0, 1], pad_id=0)
    kept, recomputed = tiny_loop(spec), tiny_loop(replace(spec, gradient_checkpointing="on"))
    assert recomputed.model.get_base_model().is_activation_checkpointing
    assert not kept.model.get_base_model().is_activation_checkpointing
    kept.step(batch)
    recomputed.step(batch)
    assert recomputed.state.last_loss == pytest.approx(kept.state.last_loss, rel=1e-5)
    for name, weight in lora_weights(kept).items():
        torch.testing.assert_close(lora_weights(recomputed)[name], weight, rtol=1e-4, atol=1e-6)

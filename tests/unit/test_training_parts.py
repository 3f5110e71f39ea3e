"""A batch cut into parts (`max_batch_tokens`) trains exactly as the whole batch: same loss, same update."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from agentloop.adapters.training.batches import collate, encode
from agentloop.adapters.training.lora import Placement, RunState, TrainLoop, make_optimizer, wrap_lora
from agentloop.adapters.training.spec import TrainSpec


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

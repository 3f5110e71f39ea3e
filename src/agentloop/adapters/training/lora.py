"""LoRA fine-tuning: a plain torch loop over a PEFT-wrapped base, with checkpoints that resume exactly.
Imported by the training subprocess only (torch)."""

from __future__ import annotations

import contextlib
import importlib
import math
import random
import re
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

from agentloop.adapters.model_files import sha256_of
from agentloop.adapters.training.base_model import load_base, prepare_base
from agentloop.adapters.training.batches import (
    IGNORE_INDEX,
    Batch,
    Encoded,
    Example,
    Schedule,
    collate,
    encode,
    read_examples,
)
from agentloop.adapters.training.export import ADAPTER_FILE, export_gguf_adapter
from agentloop.adapters.training.spec import TrainingError, TrainResult, TrainSpec

Progress = Callable[[dict[str, Any]], None]
TRAINER_STATE = "trainer.pt"
KEEP_CHECKPOINTS = 2
CHECKPOINT_NAME = re.compile(r"step-(\d+)")


@dataclass
class RunState:
    """What a checkpoint carries besides weights, optimizer and RNGs."""

    step: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    tokens_seen: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0


@dataclass(frozen=True)
class Placement:
    device: str
    qlora: bool
    notes: tuple[str, ...] = ()


def train_lora(
    spec: TrainSpec,
    on_progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a LoRA adapter as `spec` says, resuming from its latest checkpoint; export it for llama.cpp."""
    started = time.monotonic()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    placement = choose_device(spec.device)
    # Bad data fails here, before the base model costs half a minute to load.
    train_rows = read_examples(spec.train_file)
    validation_rows = read_examples(spec.validation_file) if spec.validation_file else []
    base_dir = prepare_base(spec.base, spec.base_sha256, spec.resolved_cache_dir)
    seed_everything(spec.seed)
    model, tokenizer = load_base(base_dir, placement.device, placement.qlora)
    wrap_notes: list[str] = []
    model = wrap_lora(model, spec, placement, wrap_notes)
    train = encode_examples(tokenizer, train_rows, spec.max_seq_len)
    validation = encode_examples(tokenizer, validation_rows, spec.max_seq_len)
    schedule = Schedule([len(e) for e in train], spec.batch_size, spec.seed)
    optimizer, scheduler = make_optimizer(model, spec)
    state = RunState()
    resumed = resume(spec.checkpoints_dir, model, optimizer, scheduler, state)
    loop = TrainLoop(spec, model, optimizer, scheduler, state, tokenizer.pad_token_id or 0, placement.device)
    cancelled = loop.run(train, schedule, on_progress or (lambda _: None), should_stop or (lambda: False))
    finish = Finish(spec, placement, state, loop, started, resumed)
    finish.notes.extend(wrap_notes)
    if truncated := sum(e.truncated for e in train):
        finish.notes.append(f"{truncated} of {len(train)} training examples cut to max_seq_len")
    if cancelled:
        return finish.result("cancelled")
    finish.validation_loss = loop.evaluate(validation)
    model.save_pretrained(str(spec.peft_dir))
    finish.export(model)
    return finish.result("completed")


def choose_device(requested: str) -> Placement:
    """CPU unless CUDA is there (or asked for); on CUDA, QLoRA when bitsandbytes imports, else bf16 LoRA."""
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise TrainingError("device 'cuda' was asked for but torch sees no CUDA device")
    if requested == "cpu" or not cuda:
        return Placement("cpu", qlora=False)
    try:
        importlib.import_module("bitsandbytes")
    except Exception:  # a broken CUDA install raises more than ImportError
        return Placement("cuda", qlora=False, notes=("bitsandbytes is unavailable: bf16 LoRA, not QLoRA",))
    return Placement("cuda", qlora=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # libraries draw from the global generator
    torch.manual_seed(seed)


# Bytes of activations one transformer layer keeps per token and hidden unit in bf16 for the backward pass
# (34 s b h per layer for a GPT block, Korthikanti et al. 2022, "Reducing Activation Recomputation"), plus
# 5 a s^2 b for attention scores when they are materialised: an upper bound for Gemma 3's gated MLP and LoRA.
ACTIVATION_BYTES_PER_TOKEN_UNIT = 34
ATTENTION_SCORE_BYTES = 5
CHECKPOINTING_MEMORY_SHARE = 0.5  # keep activations only when they take at most this share of free memory


def activation_bytes(config: Any, batch: int, seq_len: int) -> int:
    """Activation memory one forward pass of `batch` sequences of `seq_len` tokens keeps (an upper bound)."""
    config = getattr(config, "text_config", None) or config  # a multimodal config holds the text model's
    layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
    heads = int(config.num_attention_heads)
    per_token = ACTIVATION_BYTES_PER_TOKEN_UNIT * hidden + ATTENTION_SCORE_BYTES * heads * seq_len
    return layers * batch * seq_len * per_token


def needs_checkpointing(spec: TrainSpec, device: str, activations: int, free_bytes: int) -> bool:
    """Whether to recompute activations: as the spec says when it says "on" or "off"; "auto" on CUDA only,
    when `activations` exceed CHECKPOINTING_MEMORY_SHARE of `free_bytes` (the CPU path keeps them: its
    memory is the machine's, and the logits it saves by computing completion tokens only dwarf them)."""
    if spec.gradient_checkpointing != "auto":
        return spec.gradient_checkpointing == "on"
    return device == "cuda" and activations > CHECKPOINTING_MEMORY_SHARE * free_bytes


def pass_shape(spec: TrainSpec) -> tuple[int, int]:
    """(sequences, tokens each) of the biggest forward pass the spec allows."""
    batch = spec.batch_size
    if spec.max_batch_tokens is not None:
        batch = max(1, min(batch, spec.max_batch_tokens // spec.max_seq_len))
    return batch, spec.max_seq_len


def wrap_lora(model: Any, spec: TrainSpec, placement: Placement, notes: list[str] | None = None) -> PeftModel:
    """The base with LoRA adapters on `spec.target_modules`; recomputing activations when
    `needs_checkpointing` says so (its reason appended to `notes`)."""
    free = torch.cuda.mem_get_info()[0] if placement.device == "cuda" else 0
    activations = activation_bytes(model.config, *pass_shape(spec))
    checkpointing = needs_checkpointing(spec, placement.device, activations, free)
    if notes is not None and placement.device == "cuda":
        notes.append(
            f"gradient checkpointing {'on' if checkpointing else 'off'} ({spec.gradient_checkpointing}): "
            f"activations up to {activations / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on the GPU"
        )
    if placement.qlora:
        from peft import prepare_model_for_kbit_training

        prepare: Any = prepare_model_for_kbit_training  # untyped
        model = prepare(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(spec.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # PEFT 0.21 still asks transformers 5 for the deprecated `is_gradient_checkpointing` alias.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_seq_len: int) -> list[Encoded]:
    """Tokenize as serving does: the prompt alone (with BOS), then the completion (no special tokens)."""
    if not examples:
        return []
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [
        encode(p, c, max_seq_len, keep_prefix=1 if p and p[0] == bos else 0)
        for p, c in zip(prompts, completions, strict=True)
    ]


def make_optimizer(model: PeftModel, spec: TrainSpec) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    warmup = int(spec.warmup_ratio * spec.max_steps)
    decay = max(1, spec.max_steps - warmup)

    def factor(step: int) -> float:  # linear warmup, then linear decay towards 0 at max_steps
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (spec.max_steps - step) / decay)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainLoop:
    def __init__(
        self,
        spec: TrainSpec,
        model: PeftModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: RunState,
        pad_id: int,
        device: str,
    ) -> None:
        self.spec, self.model, self.optimizer, self.scheduler = spec, model, optimizer, scheduler
        self.state, self.pad_id, self.device = state, pad_id, device
        self.run_tokens = 0
        self.run_seconds = 0.0
        self.start_step = state.step
        hf: Any = model.get_base_model()
        self.decoder, self.head = hf.get_decoder(), hf.get_output_embeddings()
        self.softcap = getattr(hf.config.get_text_config(), "final_logit_softcapping", None)
        self.quantized = bool(getattr(hf, "is_loaded_in_4bit", False))  # NF4 computes in bf16 already

    def run(
        self, train: Sequence[Encoded], schedule: Schedule, on_progress: Progress, stop: Callable[[], bool]
    ) -> bool:
        """Train until max_steps; True when `stop()` cut it short (after a checkpoint)."""
        self.model.train()
        while self.state.step < self.spec.max_steps:
            if stop():
                if self.state.step > self.start_step:
                    self.checkpoint()
                return True
            self.step(collate(train, schedule.at(self.state.step), self.pad_id))
            on_progress(self.progress(schedule.epochs(self.state.step)))
            done = self.state.step
            if done % self.spec.checkpoint_every == 0 and done < self.spec.max_steps:
                self.checkpoint()
        return False

    def checkpoint(self) -> Path:
        return save_checkpoint(
            self.spec.checkpoints_dir, self.model, self.optimizer, self.scheduler, self.state
        )

    def step(self, batch: Batch) -> None:
        """One optimizer step over `batch`, its parts (`max_batch_tokens`) each backpropagated in turn."""
        tick = time.monotonic()
        targets = batch.target_tokens
        parts = batch.parts(self.spec.max_batch_tokens)
        total = 0.0
        for part in parts:
            with self.autocast():
                loss_sum, _ = self.loss(part)
            value = float(loss_sum.item()) / targets if targets else math.nan  # one device sync a part
            if not math.isfinite(value):
                raise TrainingError(f"loss became {value} at step {self.state.step + 1}")
            share: Any = loss_sum / targets  # this part's share of the batch's mean loss
            share.backward()
            total += value
        value = total
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.spec.max_grad_norm
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state = self.state
        state.step += 1
        state.first_loss = value if state.first_loss is None else state.first_loss
        state.last_loss = value
        state.tokens_seen += batch.tokens
        state.real_tokens += batch.tokens
        state.padded_tokens += sum(part.padded_tokens for part in parts)
        self.run_tokens += batch.tokens
        self.run_seconds += time.monotonic() - tick

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA, as the Trainer's `bf16=True` does: PEFT keeps the LoRA weights in float32
        beside a bf16 (or NF4) base, and without it every adapter product runs in float32. CPU: float32."""
        if self.device == "cuda" and not self.quantized:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over completion tokens. The LM head (640 x 262k for Gemma 3 270M, as costly as
        the rest of the model) runs on those positions only, never on the prompt."""
        ids = torch.tensor(batch.input_ids, device=self.device)
        mask = torch.tensor(batch.attention_mask, device=self.device)
        labels = torch.tensor(batch.labels, device=self.device)
        hidden = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        chosen = targets != IGNORE_INDEX
        logits = self.head(hidden[:, :-1][chosen]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits, targets[chosen], reduction="sum"), int(chosen.sum())

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Encoded]) -> float | None:
        """Mean loss per completion token over `examples`."""
        if not examples:
            return None
        self.model.eval()
        total, count = 0.0, 0
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
        size = self.spec.batch_size
        for start in range(0, len(order), size):
            with self.autocast():
                loss_sum, targets = self.loss(collate(examples, order[start : start + size], self.pad_id))
            total, count = total + float(loss_sum), count + targets
        self.model.train()
        return total / count

    def progress(self, epoch: float) -> dict[str, Any]:
        done = self.state.step - self.start_step
        per_step = self.run_seconds / done if done else 0.0
        return {
            "step": self.state.step,
            "max_steps": self.spec.max_steps,
            "loss": self.state.last_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": self.tokens_per_s,
            "eta_s": round(per_step * (self.spec.max_steps - self.state.step), 1),
            "epoch": round(epoch, 3),
        }

    @property
    def tokens_per_s(self) -> float:
        return round(self.run_tokens / self.run_seconds, 1) if self.run_seconds else 0.0


# ----------------------------------------------------------------------------------------------------------
# checkpoints: checkpoints/step-N/ holds the adapter (PEFT's files) and trainer.pt (optimizer, scheduler,
# RNG states, RunState). Written under a temporary name and renamed, so the latest complete one is resumable.
# ----------------------------------------------------------------------------------------------------------


def save_checkpoint(root: Path, model: PeftModel, optimizer: Any, scheduler: Any, state: RunState) -> Path:
    target = root / f"step-{state.step}"
    partial = root / f".step-{state.step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}
    torch.save({**trainer, "state": vars(state).copy()}, partial / TRAINER_STATE)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    for old in checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := CHECKPOINT_NAME.fullmatch(path.name)) and (path / TRAINER_STATE).is_file()
    ]
    return [path for _, path in sorted(found)]


def resume(root: Path, model: PeftModel, optimizer: Any, scheduler: Any, state: RunState) -> int | None:
    """Load the latest checkpoint into the fresh objects; its step, or None when there is none."""
    found = checkpoints(root)
    if not found:
        return None
    latest = found[-1]
    device = next(p for p in model.parameters() if p.requires_grad).device
    try:
        set_peft_model_state_dict(model, load_file(str(latest / ADAPTER_FILE), device=str(device)))
        # Our own file, holding numpy RNG state that the weights-only loader refuses.
        saved = torch.load(latest / TRAINER_STATE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"cannot resume from {latest}: {exc}") from exc
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for key, value in saved["state"].items():
        setattr(state, key, value)
    return state.step


class Finish:
    """Assemble the TrainResult; export the GGUF adapter when the base has a llama.cpp architecture."""

    def __init__(
        self,
        spec: TrainSpec,
        placement: Placement,
        state: RunState,
        loop: TrainLoop,
        started: float,
        resumed: int | None,
    ) -> None:
        self.spec, self.placement, self.state, self.loop = spec, placement, state, loop
        self.started, self.resumed = started, resumed
        self.validation_loss: float | None = None
        self.gguf_adapter: Path | None = None
        self.adapter_sha256: str | None = None
        self.notes = list(placement.notes)

    def export(self, model: PeftModel) -> None:
        hf: Any = model.get_base_model()
        config = hf.config.get_text_config()
        arch = str(config.model_type).removesuffix("_text")
        if arch.upper() not in gguf.MODEL_ARCH.__members__:
            self.notes.append(f"no GGUF adapter: llama.cpp has no architecture {arch!r}")
            return
        self.gguf_adapter = export_gguf_adapter(
            self.spec.peft_dir, self.spec.gguf_adapter, config.num_hidden_layers, self.spec.lora_alpha, arch
        )
        self.adapter_sha256 = sha256_of(self.gguf_adapter)

    @property
    def padding_fraction(self) -> float | None:
        padded = self.state.padded_tokens
        return round(1 - self.state.real_tokens / padded, 4) if padded else None

    def result(self, status: str) -> TrainResult:
        state = self.state
        completed = status == "completed"
        return TrainResult(
            status="completed" if completed else "cancelled",
            steps=state.step,
            first_train_loss=state.first_loss,
            last_train_loss=state.last_loss,
            validation_loss=self.validation_loss,
            tokens_seen=state.tokens_seen,
            tokens_per_s=self.loop.tokens_per_s,
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            duration_s=round(time.monotonic() - self.started, 2),
            device=self.placement.device,
            qlora=self.placement.qlora,
            peft_dir=self.spec.peft_dir if completed else None,
            gguf_adapter=self.gguf_adapter,
            adapter_sha256=self.adapter_sha256,
            resumed_from_step=self.resumed,
            padding_fraction=self.padding_fraction,
            notes=tuple(self.notes),
        )

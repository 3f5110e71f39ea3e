"""What a training run is asked to do and what it reports. Standard library only: the API process imports
this module, and it must never import torch."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentloop.errors import TrainingError

Device = Literal["auto", "cpu", "cuda"]
Checkpointing = Literal["auto", "on", "off"]
Status = Literal["completed", "cancelled"]

__all__ = ["PROJECTIONS", "TrainResult", "TrainSpec", "TrainingError"]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainSpec:
    base: Path  # a GGUF file (de-quantized once into the cache) or a Hugging Face model directory
    base_sha256: str
    train_file: Path
    validation_file: Path | None
    output_dir: Path
    cache_dir: Path | None = None  # where a GGUF base is de-quantized; None: ~/.cache/agentloop
    max_steps: int = 100
    batch_size: int = 4
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = PROJECTIONS
    max_seq_len: int = 512
    # Padded tokens one forward/backward pass may hold; a bigger batch is cut into parts whose gradients add
    # up to the same step (None: the whole batch at once). Bounds training's peak memory.
    max_batch_tokens: int | None = None
    seed: int = 0
    checkpoint_every: int = 50
    threads: int | None = None
    device: Device = "auto"
    # Recompute activations in the backward pass instead of keeping them. "auto": only on CUDA, and only when
    # the activations of one pass would not fit in half of the GPU's free memory (lora.needs_checkpointing).
    gradient_checkpointing: Checkpointing = "auto"

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "lora_r", "max_seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1")
        if self.learning_rate <= 0:
            raise TrainingError("learning_rate must be positive")
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            raise TrainingError("gradient_checkpointing must be auto, on or off")

    def to_json(self) -> str:
        data = {key: _plain(value) for key, value in dataclasses.asdict(self).items()}
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        data: dict[str, Any] = json.loads(text)
        for key in ("base", "train_file", "validation_file", "output_dir", "cache_dir"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        if "target_modules" in data:
            data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or Path.home() / ".cache" / "agentloop").expanduser()

    @property
    def peft_dir(self) -> Path:
        return self.output_dir / "peft"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def gguf_adapter(self) -> Path:
        return self.output_dir / "adapter.gguf"


@dataclass(frozen=True)
class TrainResult:
    status: Status
    steps: int
    first_train_loss: float | None
    last_train_loss: float | None
    validation_loss: float | None
    tokens_seen: int
    tokens_per_s: float
    peak_rss_mb: float
    duration_s: float
    device: str
    qlora: bool
    peft_dir: Path | None = None
    gguf_adapter: Path | None = None
    adapter_sha256: str | None = None
    resumed_from_step: int | None = None
    padding_fraction: float | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        data = dict(data)
        for key in ("peft_dir", "gguf_adapter"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value

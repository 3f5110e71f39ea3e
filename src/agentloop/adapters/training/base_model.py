"""The base model the trainer starts from: a GGUF de-quantized once into a cached Hugging Face directory, or
an existing Hugging Face directory used as it is. Imported by the training subprocess only (torch)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from agentloop.adapters.training.spec import TrainingError

READY_MARKER = ".agentloop-ready"


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def prepare_base(gguf_path: Path, sha256: str, cache_dir: Path) -> Path:
    """A Hugging Face model directory for `gguf_path`, de-quantized on first use (~100 s), then cached."""
    if is_hf_dir(gguf_path):
        return gguf_path
    if not gguf_path.is_file():
        raise TrainingError(f"base model {gguf_path} is neither a GGUF file nor a Hugging Face directory")
    target = cache_dir.expanduser() / "hf" / sha256[:16]
    if (target / READY_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert beside the target and rename: an interrupted conversion never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        _dequantize(gguf_path, staging)
        (staging / READY_MARKER).write_text(f"{sha256}\n")
        if target.exists():  # a stale, unmarked leftover of an older layout
            shutil.rmtree(target)
        staging.replace(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if (target / READY_MARKER).is_file():  # another process won the race
            return target
        raise
    return target


def _dequantize(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(f"cannot de-quantize {gguf_path}: {exc}") from exc
    # A model loaded from GGUF is marked quantized and refuses save_pretrained; its weights are plain F32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def load_base(model_dir: Path, device: str, quantize_4bit: bool) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face directory, in F32 on CPU, NF4 or bf16 on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if device == "cuda":
        kwargs = {"dtype": torch.bfloat16, "device_map": {"": 0}}
        if quantize_4bit:
            import transformers

            bnb: Any = transformers.BitsAndBytesConfig  # untyped
            kwargs["quantization_config"] = bnb(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"cannot load base model from {model_dir}: {exc}") from exc
    return model, tokenizer

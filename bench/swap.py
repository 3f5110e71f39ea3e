"""swap: hot swap of the serving version (LoRA adapter on / off) in the embedded engine, idle and under load.

The adapter is a real llama.cpp GGUF LoRA (small random A/B matrices on every block's attention and MLP
projections of the bundled GGUF, written with the `gguf` package as our exporter writes them), so the swap
does exactly what a promotion does: `LlamaEngine.serve_version(version, adapter_path)`. Under load,
`CLIENTS` streams generate continuously while the benchmark alternates base <-> adapter every `INTERVAL_S`.
Swap latency is the wall time of `serve_version` as the caller sees it: it queues behind requests already
submitted (those finish on the old version), so under load it includes waiting for them.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import N_BATCH, N_CTX, N_THREADS, Row, model_path
from bench.engine import counting_prompt
from bench.stats import latency_summary

CLIENTS = 3
INTERVAL_S = 1.0
RANK = 8
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_random_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    """A GGUF LoRA adapter for `base` with small random weights on every block's projections."""
    import gguf

    reader = gguf.GGUFReader(str(base))
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(RANK))
    for tensor in reader.tensors:
        stem = tensor.name.removesuffix(".weight")
        if not tensor.name.startswith("blk.") or stem.split(".")[-1] not in TARGETS:
            continue
        n_in, n_out = (int(x) for x in tensor.shape[:2])  # ggml order: ne0 = input features
        writer.add_tensor(
            stem + ".weight.lora_a", (rng.standard_normal((RANK, n_in)) * 0.01).astype(np.float32)
        )
        writer.add_tensor(
            stem + ".weight.lora_b", (rng.standard_normal((n_out, RANK)) * 0.01).astype(np.float32)
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


async def _client(engine: Any, index: int, stop: asyncio.Event, log: list[dict[str, Any]]) -> None:
    from agentloop.application.ports import Completion, GenerationRequest

    turn = 0
    while not stop.is_set():
        request = GenerationRequest(counting_prompt(300 + 50 * index + turn), max_tokens=12, temperature=0.0)
        turn += 1
        started = time.perf_counter()
        try:
            version = None
            async for item in engine.stream(request):
                if isinstance(item, Completion):
                    version = item.model_version
            log.append(
                {
                    "client": index,
                    "ok": True,
                    "ms": (time.perf_counter() - started) * 1000,
                    "version": version,
                }
            )
        except Exception as exc:  # every failure counts; the benchmark reports them
            log.append({"client": index, "ok": False, "error": f"{type(exc).__name__}: {exc}"})


async def _swaps(engine: Any, adapter: Path, count: int, interval: float) -> list[dict[str, Any]]:
    swaps = []
    for index in range(count):
        version, path = ("bench-lora", adapter) if index % 2 == 0 else ("base", None)
        started = time.perf_counter()
        await engine.serve_version(version, path)
        swaps.append(
            {"to": version, "ms": (time.perf_counter() - started) * 1000.0, "at": time.perf_counter()}
        )
        await asyncio.sleep(interval)
    return swaps


async def run(quick: bool) -> dict[str, Any]:
    from agentloop.adapters.inference.llama import LlamaEngine

    swaps_under_load = 6 if quick else 20
    base = model_path()
    with tempfile.TemporaryDirectory(prefix="agentloop-bench-swap-") as tmp:
        adapter = write_random_adapter(base, Path(tmp) / "adapter.gguf")
        engine = LlamaEngine(base, n_ctx=N_CTX, n_threads=N_THREADS, n_batch=N_BATCH)
        await engine.start()
        try:
            first = time.perf_counter()
            await engine.serve_version("bench-lora", adapter)  # the first load reads the file
            first_ms = (time.perf_counter() - first) * 1000.0
            await engine.serve_version("base", None)
            idle = await _swaps(engine, adapter, 10, 0.0)
            stop, log = asyncio.Event(), []
            clients = [asyncio.create_task(_client(engine, i, stop, log)) for i in range(CLIENTS)]
            await asyncio.sleep(1.0)
            loaded = await _swaps(engine, adapter, swaps_under_load, INTERVAL_S)
            stop.set()
            await asyncio.gather(*clients)
            await engine.serve_version("base", None)
        finally:
            await engine.close()
    return _result(first_ms, idle, loaded, log, swaps_under_load)


def _result(
    first_ms: float,
    idle: list[dict[str, Any]],
    loaded: list[dict[str, Any]],
    log: list[dict[str, Any]],
    count: int,
) -> dict[str, Any]:
    failed = [entry for entry in log if not entry["ok"]]
    idle_ms = latency_summary([s["ms"] for s in idle])
    loaded_ms = latency_summary([s["ms"] for s in loaded])
    request_ms = latency_summary([e["ms"] for e in log if e["ok"]])
    versions = sorted({str(e.get("version")) for e in log if e["ok"]})
    return {
        "parameters": {
            "clients": CLIENTS,
            "swaps_under_load": count,
            "interval_s": INTERVAL_S,
            "adapter": f"random LoRA rank {RANK} on {', '.join(TARGETS)} of every block",
            "request": "counting prompt, 12 new tokens, greedy",
        },
        "first_adapter_load_ms": first_ms,
        "idle": {"swaps": idle, "latency_ms": idle_ms},
        "under_load": {"swaps": loaded, "latency_ms": loaded_ms},
        "requests": {
            "total": len(log),
            "failed": len(failed),
            "latency_ms": request_ms,
            "versions": versions,
        },
        "failures": failed[:10],
        "notes": [
            f"swap: first adapter load {first_ms:.0f} ms; cached adapter swap P50 {idle_ms['p50']:.1f} ms "
            "idle, "
            f"{loaded_ms['p50']:.0f} ms under load (waits for the requests already queued, which finish on "
            f"the old version); {len(log)} requests during the swaps, {len(failed)} failed; versions "
            f"that answered: {versions}."
        ],
        "rows": [
            Row("swap: latency idle (adapter cached), P50", "ms", idle_ms["p50"], None, None, "info", None),
            Row(
                f"swap: latency under load ({CLIENTS} streams), P50 (P95 {loaded_ms['p95']:.0f} ms)",
                "ms",
                loaded_ms["p50"],
                None,
                None,
                "info",
                None,
            ),
            Row(
                f"swap: failed requests during {count} swaps under load",
                "",
                float(len(failed)),
                None,
                None,
                "0",
                not failed and len(log) > 0,
            ),
        ],
    }

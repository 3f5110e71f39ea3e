"""engine: our LlamaEngine.stream against raw llama-cpp-python `Llama.create_completion(stream=True)`.

Same GGUF, same n_ctx/n_threads/n_batch, greedy, no stop strings, the same fixed number of new tokens. Each
arm owns one model, loaded once. Rounds are interleaved and alternate which arm goes first, so background
load and thermal drift hit both. Two variants:
- cold: a new prompt every round (the KV cache holds only the previous round's text; both reuse just BOS);
- warm: the same prompt every round (both arms re-use the cached prefix and evaluate one token).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import N_BATCH, N_CTX, N_THREADS, Row, median, model_path

TARGET_TPS_RATIO = 0.95
PROMPT_NUMBERS = 20  # 20 three-digit numbers: exactly 100 Gemma tokens with BOS


def counting_prompt(start: int) -> str:
    """A count a base model continues without ever ending its turn, so every run makes max_tokens tokens."""
    return ", ".join(str(n) for n in range(start, start + PROMPT_NUMBERS)) + ","


@dataclass
class Sample:
    arm: str
    variant: str
    round: int
    ttft_ms: float
    total_ms: float
    tokens: int
    pieces: int
    reused_prefix: int
    finish: str
    text: str
    cpu_ms: float  # CPU time of the whole process (all threads) during the request

    @property
    def cpu_ms_per_token(self) -> float:
        return self.cpu_ms / self.tokens

    @property
    def decode_tps(self) -> float:
        """Tokens after the first, per second of the time after the first: the pure generation rate."""
        return (self.tokens - 1) / ((self.total_ms - self.ttft_ms) / 1000.0)

    @property
    def e2e_tps(self) -> float:
        return self.tokens / (self.total_ms / 1000.0)

    def record(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "decode_tps": self.decode_tps,
            "e2e_tps": self.e2e_tps,
            "cpu_ms_per_token": self.cpu_ms_per_token,
        }


class Ours:
    name = "ours"

    def __init__(self, path: Any) -> None:
        from agentloop.adapters.inference.llama import LlamaEngine

        self.engine = LlamaEngine(path, n_ctx=N_CTX, n_threads=N_THREADS, n_batch=N_BATCH)

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    async def generate(self, prompt: str, new_tokens: int, variant: str, round_: int) -> Sample:
        from agentloop.application.ports import Completion, GenerationRequest

        request = GenerationRequest(prompt, max_tokens=new_tokens, temperature=0.0, stop=())
        cached_before = self.engine.stats["cached_tokens"]
        pieces, first, completion = 0, None, None
        cpu, started = time.process_time(), time.perf_counter()
        async for item in self.engine.stream(request):
            if isinstance(item, Completion):
                completion = item  # the stream ends right after it
                continue
            first = first or time.perf_counter()
            pieces += 1
        ended, cpu = time.perf_counter(), time.process_time() - cpu
        assert completion is not None and first is not None
        # The last sampled token is never evaluated, so the context holds prompt + tokens - 1.
        evaluated = await self.engine.run_on_model_thread(lambda llm: llm.n_tokens)
        prompt_tokens = await self.engine.count_tokens(prompt)
        return Sample(
            self.name,
            variant,
            round_,
            (first - started) * 1000.0,
            (ended - started) * 1000.0,
            evaluated - prompt_tokens + 1,
            pieces,
            self.engine.stats["cached_tokens"] - cached_before,
            completion.finish_reason,
            completion.text,
            cpu * 1000.0,
        )


class Raw:
    name = "raw"

    def __init__(self, path: Any) -> None:
        self.path = path
        self.llm: Any = None

    async def start(self) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=N_CTX,
            n_threads=N_THREADS,
            n_threads_batch=N_THREADS,
            n_batch=N_BATCH,
            verbose=False,
        )

    async def close(self) -> None:
        self.llm.close()

    def _reused(self, prompt_tokens: list[int]) -> int:
        reused = 0
        for a, b in zip(self.llm._input_ids[: self.llm.n_tokens], prompt_tokens, strict=False):
            if a != b:
                break
            reused += 1
        return reused

    async def generate(self, prompt: str, new_tokens: int, variant: str, round_: int) -> Sample:
        # Plain synchronous library use, as a caller without our engine would write it.
        prompt_tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        reused = self._reused(prompt_tokens)
        pieces, first, finish, parts = 0, None, "", []
        cpu, started = time.process_time(), time.perf_counter()
        chunks = self.llm.create_completion(
            prompt,
            max_tokens=new_tokens,
            temperature=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            stop=[],
            stream=True,
        )
        for chunk in chunks:
            choice = chunk["choices"][0]
            if choice["text"]:
                first = first or time.perf_counter()
                pieces += 1
                parts.append(choice["text"])
            finish = choice["finish_reason"] or finish
        ended, cpu = time.perf_counter(), time.process_time() - cpu
        assert first is not None
        tokens = self.llm.n_tokens - len(prompt_tokens) + 1
        return Sample(
            self.name,
            variant,
            round_,
            (first - started) * 1000.0,
            (ended - started) * 1000.0,
            tokens,
            pieces,
            reused,
            finish,
            "".join(parts),
            cpu * 1000.0,
        )


async def _interleaved(
    arms: list[Any], prompts: list[str], new_tokens: int, variant: str
) -> list[tuple[Sample, Sample]]:
    pairs = []
    for round_, prompt in enumerate(prompts):
        order = arms if round_ % 2 == 0 else arms[::-1]
        samples = {arm.name: await arm.generate(prompt, new_tokens, variant, round_) for arm in order}
        pairs.append((samples["ours"], samples["raw"]))
    return pairs


def _checks(pairs: list[tuple[Sample, Sample]], new_tokens: int) -> dict[str, Any]:
    return {
        "all_generated_max_tokens": all(s.tokens == new_tokens for pair in pairs for s in pair),
        "all_finish_length": all(s.finish == "length" for pair in pairs for s in pair),
        "same_text_each_round": all(ours.text == raw.text for ours, raw in pairs),
        "token_counts": [[ours.tokens, raw.tokens] for ours, raw in pairs],
        "reused_prefix": [[ours.reused_prefix, raw.reused_prefix] for ours, raw in pairs],
    }


def _medians(pairs: list[tuple[Sample, Sample]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for index, arm in enumerate(("ours", "raw")):
        samples = [pair[index] for pair in pairs]
        out[arm] = {
            "decode_tps": median([s.decode_tps for s in samples]),
            "e2e_tps": median([s.e2e_tps for s in samples]),
            "ttft_ms": median([s.ttft_ms for s in samples]),
            "total_ms": median([s.total_ms for s in samples]),
            "cpu_ms_per_token": median([s.cpu_ms_per_token for s in samples]),
        }
    # Per-round ratios first, then their median: a noisy round moves both arms of that round together.
    out["ratio"] = {
        "decode_tps": median([o.decode_tps / r.decode_tps for o, r in pairs]),
        "e2e_tps": median([o.e2e_tps / r.e2e_tps for o, r in pairs]),
        "ttft_ms": median([o.ttft_ms / r.ttft_ms for o, r in pairs]),
        "cpu_ms_per_token": median([o.cpu_ms_per_token / r.cpu_ms_per_token for o, r in pairs]),
    }
    return out


def _rows(variant: str, medians: dict[str, dict[str, float]], checks: dict[str, Any]) -> list[Row]:
    ours, raw, ratios = medians["ours"], medians["raw"], medians["ratio"]
    valid = checks["all_generated_max_tokens"] and checks["same_text_each_round"]
    tps_ratio = ratios["decode_tps"]
    return [
        Row(
            f"engine {variant}: decode tokens/s (ours/raw)",
            "tok/s",
            ours["decode_tps"],
            raw["decode_tps"],
            tps_ratio,
            f">= {TARGET_TPS_RATIO}",
            valid and tps_ratio >= TARGET_TPS_RATIO,
        ),
        Row(
            f"engine {variant}: end-to-end tokens/s incl. prompt (ours/raw)",
            "tok/s",
            ours["e2e_tps"],
            raw["e2e_tps"],
            ratios["e2e_tps"],
            "info",
            None,
        ),
        Row(
            f"engine {variant}: time to first token (ours/raw, lower is better)",
            "ms",
            ours["ttft_ms"],
            raw["ttft_ms"],
            ratios["ttft_ms"],
            "info",
            None,
        ),
        Row(
            f"engine {variant}: process CPU time per token (ours/raw, lower is better)",
            "ms",
            ours["cpu_ms_per_token"],
            raw["cpu_ms_per_token"],
            ratios["cpu_ms_per_token"],
            "info",
            None,
        ),
    ]


async def run(quick: bool) -> dict[str, Any]:
    rounds, new_tokens = (3, 32) if quick else (5, 64)
    path = model_path()
    arms: list[Any] = [Ours(path), Raw(path)]
    for arm in arms:
        await arm.start()
    try:
        # Warm-up: first-call allocations, page cache, CPU frequency; its numbers are thrown away.
        await _interleaved(arms, [counting_prompt(901)], 16, "warmup")
        cold_prompts = [counting_prompt(100 * (r + 1) + 1) for r in range(rounds)]
        variants = {"cold": await _interleaved(arms, cold_prompts, new_tokens, "cold")}
        # Prime both caches with the warm prompt, so that every measured warm round reuses its prefix.
        warm_prompt = counting_prompt(811)
        await _interleaved(arms, [warm_prompt], 8, "prime")
        variants["warm"] = await _interleaved(arms, [warm_prompt] * rounds, new_tokens, "warm")
        prompt_tokens = len(arms[1].llm.tokenize(warm_prompt.encode(), add_bos=True, special=True))
    finally:
        for arm in arms:
            await arm.close()
    result: dict[str, Any] = {
        "parameters": {
            "model": path.name,
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "n_batch": N_BATCH,
            "rounds": rounds,
            "new_tokens": new_tokens,
            "prompt_tokens": prompt_tokens,
            "sampling": "greedy (temperature 0), no stop strings, repeat_penalty 1.0",
            "order": "interleaved; even rounds ours first, odd rounds raw first",
            "ours": "LlamaEngine.stream(GenerationRequest) consumed from asyncio, timed at the consumer",
            "baseline": "Llama.create_completion(stream=True) iterated synchronously, timed at the consumer",
            "decode_tps": "(tokens - 1) / (time of last piece - time of first piece)",
        },
        "samples": {},
        "medians": {},
        "checks": {},
        "rows": [],
    }
    for variant, pairs in variants.items():
        result["samples"][variant] = [s.record() for pair in pairs for s in pair]
        result["medians"][variant] = _medians(pairs)
        result["checks"][variant] = _checks(pairs, new_tokens)
        result["rows"] += _rows(variant, result["medians"][variant], result["checks"][variant])
    result["notes"] = [_note(variant, result["checks"][variant], new_tokens) for variant in variants]
    return result


def _note(variant: str, checks: dict[str, Any], new_tokens: int) -> str:
    ok = checks["all_generated_max_tokens"] and checks["same_text_each_round"]
    reused = sorted({n for pair in checks["reused_prefix"] for n in pair})
    verdict = (
        f"both arms generated exactly {new_tokens} tokens with identical text in every round"
        if ok
        else "WARNING: the arms did not generate the same tokens; the tokens/s comparison is not valid"
    )
    return f"engine {variant}: {verdict}; prompt tokens reused from the KV cache: {reused}."

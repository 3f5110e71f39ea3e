"""grammar: what the tool-call grammar costs. Informative, no target.

Through our LlamaEngine, on the agent's real first-step prompt for "What is 12*7?": a grammar-constrained
decision (`decision_constraint`, which decodes a calculator call) against unconstrained decoding of the same
prompt for the same number of tokens. The "constrained" arm is llama-cpp-python's full-vocabulary grammar
(bench/proposals.py, what the engine did before); "constrained_lazy" is our engine, which checks only the
greedy token against the grammar. One model, so all arms share one KV cache: each request reuses the
cached prompt prefix. Rounds interleaved, order rotated each round.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from bench.common import CACHE_DIR, N_BATCH, N_CTX, N_THREADS, Row, median, model_path

QUESTION = "What is 12*7?"
ARMS = ("constrained", "unconstrained", "constrained_lazy")
KEYS = ("decode_tps", "e2e_tps", "ttft_ms", "total_ms")


async def _timed(engine: Any, request: Any, lazy: bool) -> dict[str, Any]:
    from agentloop.application.ports import Completion

    engine.lazy = lazy
    completion = None
    async for item in engine.stream(request):
        if isinstance(item, Completion):
            completion = item
    assert completion is not None
    # The engine's own clock: the stop-sequence hold-back delays the first streamed piece of a call ("<" might
    # start "<end_of_turn>"), so a consumer-side first-token time would not be comparable with free decoding.
    tokens, total_ms, ttft_ms = completion.usage.completion_tokens, completion.duration_ms, completion.ttft_ms
    return {
        "tokens": tokens,
        "ttft_ms": ttft_ms,
        "total_ms": total_ms,
        "decode_tps": (tokens - 1) / ((total_ms - ttft_ms) / 1000.0),
        "e2e_tps": tokens / (total_ms / 1000.0),
        "finish": completion.finish_reason,
        "text": completion.text,
    }


def _cases() -> dict[str, tuple[list[Any], str]]:
    from agentloop.adapters.tools import builtin_tools
    from agentloop.application.tools import ToolRegistry
    from agentloop.bootstrap import default_tool_names
    from agentloop.settings import Settings

    settings = Settings(cache_dir=CACHE_DIR, model_path=None)
    registry = ToolRegistry(builtin_tools(settings))
    return {
        "agent tools, choice=auto": (registry.select(default_tool_names(settings, registry)), "auto"),
    }


def _requests(tools: list[Any], choice: str) -> tuple[Any, Any]:
    from agentloop.application.ports import GenerationRequest
    from agentloop.application.prompt import STOP_SEQUENCES, decision_constraint, render_prompt
    from agentloop.domain.model import DEFAULT_SYSTEM_PROMPT, Message, Role

    prompt = render_prompt(DEFAULT_SYSTEM_PROMPT, tools, [Message("", Role.USER, QUESTION)])
    constrained = GenerationRequest(
        prompt, max_tokens=64, stop=(*STOP_SEQUENCES, "\n"), constraint=decision_constraint(tools, choice)
    )
    return constrained, GenerationRequest(prompt, max_tokens=64, stop=())


async def _grammar_init_ms(engine: Any, constraint: Any) -> float:
    """llama-cpp-python keeps only the grammar text: llama.cpp parses it again on every `generate` call."""
    from llama_cpp import llama_cpp as C

    from agentloop.adapters.inference.llama import constraint_grammar

    text = constraint_grammar(constraint).encode("utf-8")

    def parse(llm: Any) -> float:
        started = time.perf_counter()
        sampler = C.llama_sampler_init_grammar(llm._model.vocab, text, b"root")
        elapsed = (time.perf_counter() - started) * 1000.0
        C.llama_sampler_free(sampler)
        return elapsed

    return float(await engine.run_on_model_thread(parse))


async def _case(engine: Any, tools: list[Any], choice: str, rounds: int) -> dict[str, Any]:
    constrained, free = _requests(tools, choice)
    # Warm-up: the prompt prefix goes into the KV cache; the constrained reply fixes the token count.
    probe = await _timed(engine, constrained, lazy=False)
    free = replace(free, max_tokens=probe["tokens"])
    await _timed(engine, free, lazy=False)
    await _timed(engine, constrained, lazy=True)
    arms = {
        "constrained": (constrained, False),
        "unconstrained": (free, False),
        "constrained_lazy": (constrained, True),
    }
    samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for round_ in range(rounds):
        shift = round_ % len(ARMS)
        for arm in ARMS[shift:] + ARMS[:shift]:
            request, lazy = arms[arm]
            samples[arm].append({"round": round_, **await _timed(engine, request, lazy)})
    by_round = list(zip(*(samples[arm] for arm in ARMS), strict=True))
    return {
        "prompt_tokens": await engine.count_tokens(constrained.prompt),
        "grammar_parse_ms": await _grammar_init_ms(engine, constrained.constraint),
        "samples": samples,
        "medians": {arm: {key: median([s[key] for s in samples[arm]]) for key in KEYS} for arm in ARMS},
        "ratio_vs_unconstrained": {
            arm: {key: median([r[i][key] / r[1][key] for r in by_round]) for key in KEYS}
            for i, arm in enumerate(ARMS)
        },
        "checks": {
            "same_token_count": all(len({s["tokens"] for s in r}) == 1 for r in by_round),
            "lazy_same_text": all(r[0]["text"] == r[2]["text"] for r in by_round),
            "constrained_text": samples["constrained"][0]["text"],
        },
    }


def _rows(name: str, case: dict[str, Any]) -> list[Row]:
    medians, ratios = case["medians"], case["ratio_vs_unconstrained"]
    valid = case["checks"]["same_token_count"]
    return [
        Row(
            f"grammar ({name}): {label} vs free decoding, tokens/s (prompt cached)",
            "tok/s",
            medians[arm]["e2e_tps"],
            medians["unconstrained"]["e2e_tps"],
            ratios[arm]["e2e_tps"] if valid else None,
            "info",
            None,
        )
        for arm, label in (
            ("constrained", "full grammar (baseline)"),
            ("constrained_lazy", "ours (greedy-checked)"),
        )
    ]


async def run(quick: bool) -> dict[str, Any]:
    from bench.proposals import LazyGrammarEngine

    rounds = 3 if quick else 5
    engine = LazyGrammarEngine(model_path(), n_ctx=N_CTX, n_threads=N_THREADS, n_batch=N_BATCH)
    await engine.start()
    try:
        cases = {
            name: await _case(engine, tools, choice, rounds) for name, (tools, choice) in _cases().items()
        }
    finally:
        await engine.close()
    return {
        "parameters": {
            "question": QUESTION,
            "n_ctx": N_CTX,
            "n_threads": N_THREADS,
            "n_batch": N_BATCH,
            "rounds": rounds,
            "constrained": "GenerationRequest with decision_constraint(tools, choice), agent stop sequences",
            "unconstrained": "same prompt, no constraint, no stop, max_tokens = the constrained token count",
            "constrained_lazy": "the constrained request through our engine (greedy-checked grammar)",
        },
        "cases": cases,
        "rows": [row for name, case in cases.items() for row in _rows(name, case)],
        "notes": [_note(name, case) for name, case in cases.items()],
    }


def _note(name: str, case: dict[str, Any]) -> str:
    medians, checks = case["medians"], case["checks"]
    same = "identical to" if checks["lazy_same_text"] else "DIFFERENT from"
    return (
        f"grammar ({name}): {case['prompt_tokens']} prompt tokens; decoded {checks['constrained_text']!r} "
        f"(lazy check: {same} the current engine); llama.cpp parses the grammar on every generate call "
        f"({case['grammar_parse_ms']:.1f} ms); median time to first token "
        f"{medians['constrained']['ttft_ms']:.0f} ms constrained, "
        f"{medians['constrained_lazy']['ttft_ms']:.0f} ms lazy, "
        f"{medians['unconstrained']['ttft_ms']:.0f} ms free (engine clock)."
    )

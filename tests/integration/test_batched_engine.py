"""Continuous batching in LlamaEngine (max_parallel=4) against the real Gemma 3 270M GGUF: concurrent
requests decode together in one llama.cpp batch and each gets exactly the reply the one-at-a-time engine
gives; grammar, stop strings, seeds, cancellation, prefix sharing between sequences, context overflow and
the version barrier of a hot swap. Replies are kept to a few tokens."""

from __future__ import annotations

import asyncio
from typing import Any

import jsonschema
import pytest

from agentloop.adapters.inference.llama import LlamaEngine
from agentloop.adapters.tools.calculator import calculator_tool
from agentloop.application.ports import Completion, GenerationRequest, Token, complete
from agentloop.application.prompt import ParsedCall, decision_constraint, parse_reply, render_prompt
from agentloop.domain.model import DEFAULT_SYSTEM_PROMPT, Message, Role
from agentloop.errors import ContextOverflowError

pytestmark = pytest.mark.model

COUNTING = "1, 2, 3, 4, 5,"
# Continuations the model is sure of: from 4 sequences per step llama.cpp's CPU backend multiplies with its
# repacked Q4_K gemm kernel, whose rounding differs from the one-sequence kernel (logits up to ~1 apart); that
# may flip a near-tie of greedy decoding, never these.
SEEDED = "In a quiet town by the sea, an old sailor"
PROMPTS = [COUNTING, "Monday, Tuesday,", "January, February, March,", "A, B, C, D,"]


async def test_concurrent_requests_decode_together_with_the_serial_replies(
    llama_engine: LlamaEngine, batched_llama_engine: LlamaEngine
) -> None:
    requests = [GenerationRequest(prompt, max_tokens=6) for prompt in PROMPTS]
    serial = [await complete(llama_engine, request) for request in requests]
    steps_before = batched_llama_engine.stats.get("batch_steps", 0)
    batched = await asyncio.wait_for(
        asyncio.gather(*(complete(batched_llama_engine, request) for request in requests)), timeout=120
    )
    assert [c.text for c in batched] == [c.text for c in serial]
    assert [c.usage for c in batched] == [c.usage for c in serial]
    assert all(c.finish_reason == "length" for c in batched)
    # Four requests of 6 tokens took far fewer than 4 x 8 decode steps: they shared batches.
    assert batched_llama_engine.stats["max_batch"] >= 2
    assert batched_llama_engine.stats["batch_steps"] - steps_before < 4 * 6


async def test_grammar_stop_and_free_text_requests_batch_together(
    llama_engine: LlamaEngine, batched_llama_engine: LlamaEngine
) -> None:
    tool = calculator_tool(timeout_s=5.0)
    prompt = render_prompt(DEFAULT_SYSTEM_PROMPT, [tool], [Message("", Role.USER, "What is 12*7?")])
    call = GenerationRequest(prompt, max_tokens=48, constraint=decision_constraint([tool], "required"))
    stopped = GenerationRequest(COUNTING, max_tokens=12, stop=("8",))
    free = GenerationRequest("Monday, Tuesday,", max_tokens=10)
    serial = [await complete(llama_engine, r) for r in (stopped, free)]
    batched = await asyncio.wait_for(
        asyncio.gather(*(complete(batched_llama_engine, r) for r in (call, stopped, free))), timeout=120
    )
    reply = parse_reply(batched[0].text)
    assert isinstance(reply, ParsedCall) and reply.call is not None, batched[0].text
    assert reply.call.name == "calculator"
    jsonschema.validate(reply.call.arguments, tool.parameters)
    assert batched[1].finish_reason == "stop" and "8" not in batched[1].text
    assert [c.text for c in batched[1:]] == [c.text for c in serial]


async def test_each_sequence_samples_with_its_own_seed(batched_llama_engine: LlamaEngine) -> None:
    # A prompt no slot has cached, so every copy is prefilled whole, by the same kernels. top_p keeps the
    # sample inside the nucleus: in the 262k-token tail a difference in the last bits of the logits (e.g. a
    # prefix read from the cache instead of computed) would move the draw to another token.
    def sampled(seed: int) -> GenerationRequest:
        return GenerationRequest(SEEDED, max_tokens=10, temperature=0.8, top_p=0.9, seed=seed)

    replies = await asyncio.gather(*(complete(batched_llama_engine, sampled(s)) for s in (7, 7, 8, 9)))
    assert replies[0].text == replies[1].text
    assert len({r.text for r in replies}) >= 2, "different seeds all sampled the same reply"
    assert all(r.usage.completion_tokens == 10 for r in replies)


async def test_sampled_tool_calls_keep_to_the_grammar(batched_llama_engine: LlamaEngine) -> None:
    """With temperature the grammar is checked on the drawn token only (a whole-vocabulary pass when it is
    rejected): the call still parses and fits the schema. (One request: the grammar test above left this
    prompt in a slot's cache.)"""
    tool = calculator_tool(timeout_s=5.0)
    prompt = render_prompt(DEFAULT_SYSTEM_PROMPT, [tool], [Message("", Role.USER, "What is 12*7?")])
    constraint = decision_constraint([tool], "required")

    request = GenerationRequest(prompt, max_tokens=40, temperature=0.7, seed=5, constraint=constraint)
    completion = await complete(batched_llama_engine, request)
    reply = parse_reply(completion.text)
    assert isinstance(reply, ParsedCall) and reply.call is not None, completion.text
    jsonschema.validate(reply.call.arguments, tool.parameters)


async def test_abandoned_streams_free_their_sequences(batched_llama_engine: LlamaEngine) -> None:
    streams = [batched_llama_engine.stream(GenerationRequest(COUNTING, max_tokens=1000)) for _ in range(4)]
    for stream in streams:
        assert isinstance(await anext(stream), Token)
    for stream in streams:
        await stream.aclose()
    # Four more abandoned 1000-token replies would take minutes; the slots must be free for this one.
    follow_up = await asyncio.wait_for(
        complete(batched_llama_engine, GenerationRequest("The capital of France is", max_tokens=3)),
        timeout=60,
    )
    assert follow_up.usage.completion_tokens == 3
    scheduler: Any = batched_llama_engine._scheduler
    assert not scheduler.active and not any(slot.busy for slot in scheduler.slots)


async def test_a_free_sequence_keeps_its_prompt_prefix_for_the_next_request(
    batched_llama_engine: LlamaEngine,
) -> None:
    prefix = "".join(f"Entry {n}: a red fox and a grey wolf met by the river.\n" for n in range(20))
    prefix_tokens = await batched_llama_engine.count_tokens(prefix)
    # Another sequence keeps generating meanwhile: the prefix cache works beside it.
    other = batched_llama_engine.stream(GenerationRequest(COUNTING, max_tokens=200))
    assert isinstance(await anext(other), Token)
    await complete(batched_llama_engine, GenerationRequest(prefix + "Question one:", max_tokens=1))
    before = dict(batched_llama_engine.stats)
    second = await complete(
        batched_llama_engine, GenerationRequest(prefix + "Another question:", max_tokens=2)
    )
    await other.aclose()
    cached = batched_llama_engine.stats["cached_tokens"] - before["cached_tokens"]
    assert second.usage.completion_tokens == 2
    assert prefix_tokens > 200
    assert prefix_tokens - 2 <= cached <= prefix_tokens + 1, (cached, prefix_tokens)
    assert second.extra["cached_tokens"] == cached  # what the cache-hit metric reads


async def test_overflow_fails_one_request_and_the_others_finish(batched_llama_engine: LlamaEngine) -> None:
    too_long = "word " * (batched_llama_engine.context_size + 100)
    results = await asyncio.gather(
        complete(batched_llama_engine, GenerationRequest(COUNTING, max_tokens=4)),
        complete(batched_llama_engine, GenerationRequest(too_long, max_tokens=8)),
        complete(batched_llama_engine, GenerationRequest("Monday, Tuesday,", max_tokens=4)),
        return_exceptions=True,
    )
    assert isinstance(results[1], ContextOverflowError)
    assert all(isinstance(r, Completion) and r.usage.completion_tokens == 4 for r in (results[0], results[2]))


async def test_a_version_swap_waits_for_in_flight_sequences(batched_llama_engine: LlamaEngine) -> None:
    """A LoRA adapter applies to the whole context, so a swap is a barrier: requests submitted before it
    finish on the old version, requests after it start on the new one, none fails."""
    old = batched_llama_engine.model_version
    active_at_swap: list[int] = []
    before = [
        asyncio.create_task(complete(batched_llama_engine, GenerationRequest(p, max_tokens=6)))
        for p in PROMPTS[:3]
    ]
    await asyncio.sleep(0.05)
    scheduler: Any = batched_llama_engine._scheduler
    swap = asyncio.create_task(batched_llama_engine.serve_version("swapped", None))
    probe = asyncio.create_task(
        batched_llama_engine.run_on_model_thread(lambda _llm: active_at_swap.append(len(scheduler.active)))
    )
    await asyncio.sleep(0)
    after = [
        asyncio.create_task(complete(batched_llama_engine, GenerationRequest(p, max_tokens=6)))
        for p in PROMPTS[:2]
    ]
    try:
        done_before = await asyncio.wait_for(asyncio.gather(*before), timeout=120)
        await swap
        await probe
        done_after = await asyncio.wait_for(asyncio.gather(*after), timeout=120)
    finally:
        await batched_llama_engine.serve_version(old, None)
    assert [c.model_version for c in done_before] == [old] * 3
    assert [c.model_version for c in done_after] == ["swapped"] * 2
    assert active_at_swap == [0]

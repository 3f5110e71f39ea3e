"""LlamaEngine against the real Gemma 3 270M GGUF: greedy decoding, limits, streaming, grammar-constrained
tool calls, the KV prefix cache, cancellation, queuing and context overflow. One engine for the session
(`llama_engine` in tests/conftest.py); replies are kept to a few tokens."""

from __future__ import annotations

import asyncio
import time

import jsonschema
import pytest

from agentloop.adapters.inference.llama import LlamaEngine
from agentloop.adapters.tools.calculator import calculator_tool
from agentloop.application.ports import Completion, GenerationRequest, Token, complete
from agentloop.application.prompt import ParsedCall, decision_constraint, parse_reply, render_prompt
from agentloop.domain.model import DEFAULT_SYSTEM_PROMPT, Message, Role
from agentloop.errors import ContextOverflowError

pytestmark = pytest.mark.model

COUNTING = "1, 2, 3, 4, 5,"  # a base model continues a count reliably, without ending its turn early


async def collect(engine: LlamaEngine, request: GenerationRequest) -> tuple[list[Token], Completion]:
    tokens: list[Token] = []
    async for item in engine.stream(request):
        if isinstance(item, Completion):
            return tokens, item
        tokens.append(item)
    raise AssertionError("the stream ended without a Completion")


async def test_greedy_generation_is_deterministic(llama_engine: LlamaEngine) -> None:
    request = GenerationRequest("The capital of France is", max_tokens=12)
    first = await complete(llama_engine, request)
    second = await complete(llama_engine, request)
    assert first.text.strip()
    assert second.text == first.text
    assert second.usage == first.usage
    assert first.model_version == llama_engine.model_version


async def test_max_tokens_ends_the_reply_with_length(llama_engine: LlamaEngine) -> None:
    completion = await complete(llama_engine, GenerationRequest(COUNTING, max_tokens=5))
    assert completion.finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == await llama_engine.count_tokens(COUNTING)


async def test_stop_sequence_cuts_the_reply_before_it(llama_engine: LlamaEngine) -> None:
    free = await complete(llama_engine, GenerationRequest(COUNTING, max_tokens=12))
    assert "8" in free.text, f"precondition: the model counts on, got {free.text!r}"
    stopped = await complete(llama_engine, GenerationRequest(COUNTING, max_tokens=12, stop=("8",)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index("8")]
    assert stopped.usage.completion_tokens < free.usage.completion_tokens


async def test_streamed_tokens_add_up_to_the_completion(llama_engine: LlamaEngine) -> None:
    tokens, completion = await collect(llama_engine, GenerationRequest(COUNTING, max_tokens=10))
    assert len(tokens) >= 2
    assert all(token.text for token in tokens)
    assert "".join(token.text for token in tokens) == completion.text
    assert completion.usage.completion_tokens == 10
    assert completion.ttft_ms <= completion.duration_ms


async def test_required_decision_always_decodes_a_valid_calculator_call(llama_engine: LlamaEngine) -> None:
    tool = calculator_tool(timeout_s=5.0)
    prompt = render_prompt(DEFAULT_SYSTEM_PROMPT, [tool], [Message("", Role.USER, "What is 12*7?")])
    constraint = decision_constraint([tool], "required")
    completion = await complete(llama_engine, GenerationRequest(prompt, max_tokens=64, constraint=constraint))
    assert completion.finish_reason == "stop", completion.text
    reply = parse_reply(completion.text)
    assert isinstance(reply, ParsedCall), completion.text
    assert reply.error is None and reply.call is not None
    assert reply.call.name == "calculator"
    jsonschema.validate(reply.call.arguments, tool.parameters)


async def test_a_shared_prompt_prefix_is_reused_from_the_kv_cache(llama_engine: LlamaEngine) -> None:
    prefix = "".join(f"Line {n}: the quick brown fox jumps over the lazy dog.\n" for n in range(20))
    prefix_tokens = await llama_engine.count_tokens(prefix)
    await complete(llama_engine, GenerationRequest(prefix + "Question one:", max_tokens=1))
    before = dict(llama_engine.stats)
    await complete(llama_engine, GenerationRequest(prefix + "Another question:", max_tokens=1))
    after = llama_engine.stats
    assert after["requests"] == before["requests"] + 1
    cached = after["cached_tokens"] - before["cached_tokens"]
    assert prefix_tokens > 200
    # The boundary token may merge with the suffix, so allow a token either way.
    assert prefix_tokens - 2 <= cached <= prefix_tokens + 1, (cached, prefix_tokens)


async def test_an_abandoned_stream_stops_generating(llama_engine: LlamaEngine) -> None:
    # Other work on the machine changes the speed, so the follow-up's wait is compared with a measured one.
    started = time.perf_counter()
    await complete(llama_engine, GenerationRequest("Once upon a time", max_tokens=20))
    per_token = (time.perf_counter() - started) / 20

    stream = llama_engine.stream(GenerationRequest(COUNTING, max_tokens=1000))
    seen = [await anext(stream), await anext(stream)]
    assert all(isinstance(item, Token) for item in seen)
    await stream.aclose()

    started = time.perf_counter()
    follow_up = await asyncio.wait_for(
        complete(llama_engine, GenerationRequest("The capital of France is", max_tokens=3)), timeout=120
    )
    waited = time.perf_counter() - started
    assert follow_up.usage.completion_tokens == 3
    # Finishing the abandoned reply would take ~1000 tokens' time; the follow-up needs a few.
    assert waited < 200 * per_token, (
        f"the follow-up waited {waited:.1f} s ({waited / per_token:.0f} tokens' time): "
        "the abandoned stream kept generating"
    )


async def test_concurrent_requests_queue_and_each_gets_its_own_reply(llama_engine: LlamaEngine) -> None:
    prompts = ["The capital of France is", COUNTING, "Monday, Tuesday,"]
    requests = [GenerationRequest(prompt, max_tokens=6) for prompt in prompts]
    alone = [await complete(llama_engine, request) for request in requests]
    together = await asyncio.wait_for(
        asyncio.gather(*(complete(llama_engine, request) for request in requests)), timeout=60
    )
    assert [c.text for c in together] == [c.text for c in alone]
    assert all(c.usage.completion_tokens == 6 for c in together)


async def test_a_prompt_longer_than_the_context_is_refused(llama_engine: LlamaEngine) -> None:
    prompt = "word " * (llama_engine.context_size + 100)
    with pytest.raises(ContextOverflowError) as raised:
        await complete(llama_engine, GenerationRequest(prompt, max_tokens=8))
    assert raised.value.prompt_tokens > llama_engine.context_size
    # The engine is still usable afterwards.
    after = await complete(llama_engine, GenerationRequest(COUNTING, max_tokens=2))
    assert after.usage.completion_tokens == 2


async def test_engine_start_writes_no_raw_llama_cpp_lines_to_stderr(
    llama_engine: LlamaEngine, capfd: pytest.CaptureFixture[str]
) -> None:
    """llama.cpp's warnings (e.g. "using full-size SWA cache") go to the `llama.cpp` logger, which starts at
    ERROR, not to stderr as raw text on every `agentloop ask` (llama_logs.py)."""
    capfd.readouterr()
    engine = LlamaEngine(llama_engine.model_path, n_ctx=512, n_threads=1, max_parallel=2)
    await engine.start()
    try:
        await complete(engine, GenerationRequest(COUNTING, max_tokens=2))
    finally:
        await engine.close()
    assert "llama_" not in capfd.readouterr().err

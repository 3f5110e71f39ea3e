"""The `openai` backend against a real OpenAI-compatible server: `python -m llama_cpp.server` serving the
bundled Gemma GGUF in its own process. One agent turn runs through it end to end (tool call, tool, answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentloop.adapters.inference.remote import OpenAIEngine
from agentloop.adapters.model_files import ModelFile
from agentloop.adapters.tools import builtin_tools
from agentloop.application.agent import AgentService, ModelStep
from agentloop.application.ports import Completion, GenerationRequest, OutputConstraint, Token, complete
from agentloop.application.tools import ToolRegistry
from agentloop.domain.model import Agent, Conversation, Message, ModelConfig, Role
from agentloop.errors import InferenceError
from agentloop.settings import Settings
from fakes import FakeStore
from services import free_port, start_llama_server, wait_for_port

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def llama_server(model_file: ModelFile, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    process = start_llama_server(model_file.path, port, log)
    try:
        wait_for_port(port, 120, process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
async def engine(llama_server: str) -> AsyncIterator[OpenAIEngine]:
    remote = OpenAIEngine(llama_server, "gemma", context_size=2048, timeout_s=120, retries=1)
    try:
        yield remote
    finally:
        await remote.close()


def calculator() -> ToolRegistry:
    return ToolRegistry(builtin_tools(Settings(_env_file=None)))  # type: ignore[call-arg]


async def test_one_agent_turn_calls_the_calculator_through_the_server(
    engine: OpenAIEngine, tmp_path: Path
) -> None:
    agent = Agent("remote", ModelConfig(max_tokens=40), allowed_tools=("calculator",), max_steps=2)
    store = FakeStore([agent])
    conversation = Conversation(agent.id)
    await store.create_conversation(conversation)
    service = AgentService(engine, store, calculator(), tmp_path, single_line_answers=True)

    turn = await service.ask(conversation.id, "What is 12*7?")

    call, result = turn.steps[0]
    assert (call.name, result.output) == ("calculator", "84")
    assert "84" in turn.message.content
    assert turn.message.model_version == "base"
    assert turn.usage.prompt_tokens > 200 and turn.usage.completion_tokens > 0
    # The server's tokenizer counted the prompt (not the fallback estimate).
    assert engine._tokenize_route == "/extras/tokenize/count"


async def test_text_answers_stream_token_by_token(engine: OpenAIEngine) -> None:
    step = ModelStep(
        engine,
        "You are helpful.",
        calculator().select(["calculator"]),
        [Message("c", Role.USER, "Hi")],
        ModelConfig(max_tokens=16),
        "none",
        single_line=True,
    )
    request = await step.request()
    items = [item async for item in engine.stream(request)]
    tokens = [item.text for item in items if isinstance(item, Token)]
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert len(tokens) > 1 and "".join(tokens) == completion.text
    assert completion.text and not completion.text.startswith("<")
    assert completion.ttft_ms <= completion.duration_ms


async def test_an_unreachable_server_is_an_inference_error() -> None:
    dead = OpenAIEngine(f"http://127.0.0.1:{free_port()}/v1", "gemma", timeout_s=2, retries=1)
    try:
        with pytest.raises(InferenceError, match=r"unreachable|Connection"):
            async for _ in dead.stream(GenerationRequest("hi", max_tokens=2)):
                pass
        with pytest.raises(InferenceError):
            await dead.count_tokens("hi")
    finally:
        await dead.close()


async def test_sampling_decides_under_the_servers_grammar(engine: OpenAIEngine) -> None:
    # temperature > 0 skips the free-decode shortcut: the first character is decoded under our GBNF grammar
    # (sent in the request's `grammar` field), the rest continues unconstrained.
    no_call = OutputConstraint({"type": "object"}, "<tool_call>", "</tool_call>", allow_call=False)
    request = GenerationRequest(
        "<start_of_turn>user\nSay hello.<end_of_turn>\n<start_of_turn>model\n",
        max_tokens=6,
        temperature=0.7,
        seed=3,
        constraint=no_call,
    )
    items = [item async for item in engine.stream(request)]
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert completion.text and completion.text[0] not in "< \t\n"
    assert "".join(item.text for item in items if isinstance(item, Token)) == completion.text
    assert completion.usage.completion_tokens >= 2  # one grammar token, then the free continuation


@pytest.mark.slow
async def test_the_server_honours_the_grammar(engine: OpenAIEngine) -> None:
    # A schema with one possible value forces the reply: only a server that applies the grammar produces it.
    # Slow (about 35 s here): llama-cpp-python's server checks a grammar over the whole vocabulary.
    forced = OutputConstraint({"const": 7}, "<tool_call>", "</tool_call>", allow_text=False)
    request = GenerationRequest("Write a poem.", max_tokens=32, temperature=0.9, seed=5, constraint=forced)
    assert (await complete(engine, request)).text == "<tool_call>7</tool_call>"

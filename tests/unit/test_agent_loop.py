"""The agent turn with a scripted engine, an in-memory store and the real tool registry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agentloop.application.agent import AgentService, TokenStreamed, ToolCalled, ToolReturned, TurnFinished
from agentloop.application.tools import Tool, ToolContext, ToolExample, ToolRegistry
from agentloop.domain.events import ConversationSaved, ResponseGenerated, ToolExecuted
from agentloop.domain.model import Agent, Conversation, ModelConfig, Role
from agentloop.errors import ContextOverflowError, ValidationError
from fakes import FakeEngine, FakeStore

SCHEMA = {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}


def call(name: str, **arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


async def add(arguments: dict[str, Any], context: ToolContext) -> str:
    left, right = arguments["expression"].split("+")
    return str(int(left) + int(right))


async def explode(arguments: dict[str, Any], context: ToolContext) -> str:
    raise RuntimeError("boom")


async def sleepy(arguments: dict[str, Any], context: ToolContext) -> str:
    await asyncio.sleep(5)
    return "late"


def registry() -> ToolRegistry:
    example = ToolExample("What is 1+1?", {"expression": "1+1"}, "2", "2 (1+1 = 2).")
    return ToolRegistry(
        [
            Tool("adder", "Adds two numbers.", SCHEMA, example=example, handler=add),
            Tool("broken", "Always fails.", SCHEMA, handler=explode),
            Tool("slow", "Too slow.", SCHEMA, handler=sleepy, timeout_s=0.05),
        ]
    )


class World:
    def __init__(self, tmp_path: Path, replies: list[str], max_steps: int = 5, tools: tuple[str, ...] = ()):
        self.agent = Agent(
            "test", ModelConfig(max_tokens=64), tools or ("adder", "broken", "slow"), max_steps=max_steps
        )
        self.engine = FakeEngine(replies)
        self.store = FakeStore([self.agent])
        self.service = AgentService(self.engine, self.store, registry(), tmp_path)
        self.conversation = Conversation(self.agent.id)

    async def turn(self, text: str) -> list[object]:
        await self.store.create_conversation(self.conversation)
        return [event async for event in self.service.run_turn(self.conversation.id, text)]

    def stored(self) -> list[tuple[Role, str]]:
        return [(m.role, m.content) for m in self.store.conversations[self.conversation.id].messages]


async def test_tool_call_then_answer(tmp_path: Path) -> None:
    world = World(tmp_path, [call("adder", expression="2+3"), "5 (2+3 = 5)."])
    events = await world.turn("What is 2+3?")
    called = [e for e in events if isinstance(e, ToolCalled)]
    returned = [e for e in events if isinstance(e, ToolReturned)]
    final = events[-1]
    assert [c.call.name for c in called] == ["adder"]
    assert returned[0].result.ok and returned[0].result.output == "5"
    assert isinstance(final, TurnFinished) and final.message.content == "5 (2+3 = 5)."
    assert final.message.model_version == "fake-1"
    assert "".join(e.text for e in events if isinstance(e, TokenStreamed)) == "5 (2+3 = 5)."
    assert [role for role, _ in world.stored()] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]


async def test_every_step_is_committed_with_events(tmp_path: Path) -> None:
    world = World(tmp_path, [call("adder", expression="2+3"), "5"])
    await world.turn("What is 2+3?")
    assert world.store.commits == 4  # user, call, result (+ToolExecuted), answer (+events)
    names = [type(e) for e in world.store.events]
    assert names == [ToolExecuted, ResponseGenerated, ConversationSaved]
    generated = world.store.events[1]
    assert isinstance(generated, ResponseGenerated) and generated.steps == 1


async def test_tool_call_text_is_never_streamed(tmp_path: Path) -> None:
    world = World(tmp_path, [call("adder", expression="1+2"), "3"])
    events = await world.turn("1+2?")
    streamed = "".join(e.text for e in events if isinstance(e, TokenStreamed))
    assert streamed == "3"


async def test_tool_error_becomes_an_observation(tmp_path: Path) -> None:
    world = World(tmp_path, [call("broken", expression="1"), "sorry"])
    events = await world.turn("break it")
    result = next(e for e in events if isinstance(e, ToolReturned)).result
    assert not result.ok and "boom" in (result.error or "")
    assert "boom" in world.engine.requests[1].prompt  # the model saw the error
    assert isinstance(events[-1], TurnFinished)


async def test_tool_timeout_becomes_an_observation(tmp_path: Path) -> None:
    world = World(tmp_path, [call("slow", expression="1"), "too slow"])
    events = await world.turn("wait")
    result = next(e for e in events if isinstance(e, ToolReturned)).result
    assert not result.ok and "timed out" in (result.error or "")


async def test_invalid_arguments_are_rejected_before_running(tmp_path: Path) -> None:
    world = World(tmp_path, ['<tool_call>{"name": "adder", "arguments": {"x": 1}}</tool_call>', "ok"])
    events = await world.turn("add")
    result = next(e for e in events if isinstance(e, ToolReturned)).result
    assert not result.ok and "invalid arguments" in (result.error or "")


async def test_malformed_call_is_an_observation(tmp_path: Path) -> None:
    world = World(tmp_path, ['<tool_call>{"name": "adder", "argu', "ok"])
    events = await world.turn("add")
    result = next(e for e in events if isinstance(e, ToolReturned)).result
    assert not result.ok and "not valid JSON" in (result.error or "")


async def test_unknown_or_disallowed_tool(tmp_path: Path) -> None:
    world = World(tmp_path, [call("broken", expression="1"), "ok"], tools=("adder",))
    events = await world.turn("x")
    result = next(e for e in events if isinstance(e, ToolReturned)).result
    assert not result.ok and "not available" in (result.error or "")


async def test_step_limit_forces_an_answer(tmp_path: Path) -> None:
    replies = [call("adder", expression=f"{i}+10") for i in range(3)] + ["done"]
    world = World(tmp_path, replies, max_steps=3)
    events = await world.turn("loop forever")
    assert sum(isinstance(e, ToolCalled) for e in events) == 3
    last = world.engine.requests[-1]
    assert last.constraint is not None and not last.constraint.allow_call
    assert isinstance(events[-1], TurnFinished) and events[-1].message.content == "done"


async def test_repeated_call_forces_an_answer(tmp_path: Path) -> None:
    same = call("adder", expression="2+2")
    world = World(tmp_path, [same, same, "4"])
    events = await world.turn("2+2")
    assert sum(isinstance(e, ToolCalled) for e in events) == 2
    assert world.engine.requests[-1].constraint is not None
    assert not world.engine.requests[-1].constraint.allow_call


async def test_copied_example_call_is_not_run(tmp_path: Path) -> None:
    world = World(tmp_path, [call("adder", expression="1+1"), "hello"])
    events = await world.turn("hi")
    assert not any(isinstance(e, ToolCalled) for e in events)
    assert isinstance(events[-1], TurnFinished) and events[-1].message.content == "hello"


async def test_history_reaches_the_prompt(tmp_path: Path) -> None:
    world = World(tmp_path, ["first answer", "second answer"])
    await world.turn("first question")
    async for _ in world.service.run_turn(world.conversation.id, "second question"):
        pass
    prompt = world.engine.requests[-1].prompt
    assert prompt.index("first question") < prompt.index("first answer") < prompt.index("second question")


@pytest.mark.parametrize("text", ["", "   ", "x" * 20000])
async def test_bad_messages_are_refused_before_storing(tmp_path: Path, text: str) -> None:
    world = World(tmp_path, ["never"])
    with pytest.raises(ValidationError):
        await world.turn(text)
    assert world.stored() == []


async def test_context_overflow_is_a_clear_error_and_keeps_the_message(tmp_path: Path) -> None:
    world = World(tmp_path, ["never"])
    world.engine._context = 100
    with pytest.raises(ContextOverflowError) as caught:
        await world.turn("a long question " * 40)
    assert caught.value.field == "messages"
    assert world.stored()[0][0] == Role.USER


async def test_ask_returns_the_outcome(tmp_path: Path) -> None:
    world = World(tmp_path, [call("adder", expression="40+2"), "42"])
    await world.store.create_conversation(world.conversation)
    outcome = await world.service.ask(world.conversation.id, "40+2?")
    assert outcome.message.content == "42"
    assert [(c.name, r.output) for c, r in outcome.steps] == [("adder", "42")]
    assert outcome.usage.completion_tokens > 0

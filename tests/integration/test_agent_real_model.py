"""The agent turn on the real model: `bootstrap` builds the embedded Gemma engine, the built-in tools and
SQLite in a temporary data dir. One arithmetic turn is run per module (a constrained tool call costs
seconds on 2 cores) and the tests check its outcome, what was stored, and that it survives a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentloop.adapters.storage import SqlStore, create_engine, create_sessionmaker
from agentloop.application.agent import ToolCalled, ToolReturned, TurnFinished
from agentloop.bootstrap import bootstrap
from agentloop.domain.model import Conversation, Message, Role
from agentloop.settings import Settings

pytestmark = pytest.mark.model

QUESTION = "What is 12*7?"


@dataclass
class AskedTurn:
    settings: Settings
    conversation_id: str
    agent_id: str
    model_version: str
    turn: TurnFinished
    # How many messages the store held when each step was reported: steps are committed as they happen.
    stored_when: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture(scope="module")
async def asked(
    model_settings: Callable[[Path], Settings], tmp_path_factory: pytest.TempPathFactory
) -> AskedTurn:
    settings = model_settings(tmp_path_factory.mktemp("agent-data"))
    async with bootstrap(settings) as container:
        conversation = Conversation(container.default_agent.id, title="arithmetic", source="test")
        await container.store.create_conversation(conversation)
        stored_when: list[tuple[str, int]] = []
        finished: TurnFinished | None = None
        async for event in container.agents.run_turn(conversation.id, QUESTION):
            if isinstance(event, ToolCalled | ToolReturned | TurnFinished):
                stored = await container.store.get_conversation(conversation.id)
                stored_when.append((type(event).__name__, len(stored.messages)))
            if isinstance(event, TurnFinished):
                finished = event
        assert finished is not None
        return AskedTurn(
            settings,
            conversation.id,
            container.default_agent.id,
            container.engine.model_version,
            finished,
            stored_when,
        )


@pytest.fixture
async def store(asked: AskedTurn) -> AsyncIterator[SqlStore]:
    """The SQLite store of the asked turn's data dir, opened afresh (no model)."""
    database = create_engine(asked.settings.resolved_database_url)
    try:
        yield SqlStore(create_sessionmaker(database))
    finally:
        await database.dispose()


def test_arithmetic_is_done_by_the_calculator_and_answered(asked: AskedTurn) -> None:
    turn = asked.turn
    assert turn.steps, f"no tool step; answer was {turn.message.content!r}"
    call, result = turn.steps[0]
    assert call.name == "calculator"
    assert result.ok and result.output == "84", result
    assert "84" in turn.message.content
    assert turn.usage.prompt_tokens > 0 and turn.usage.completion_tokens > 0
    assert turn.message.model_version == asked.model_version


async def test_every_step_is_stored_in_order_as_it_happens(asked: AskedTurn, store: SqlStore) -> None:
    messages = (await store.get_conversation(asked.conversation_id)).messages
    steps = asked.turn.steps
    assert len(messages) == 2 + 2 * len(steps)
    user, *middle, final = messages
    assert (user.role, user.content) == (Role.USER, QUESTION)
    for (call, result), asking, answering in zip(steps, middle[::2], middle[1::2], strict=True):
        assert asking.role == Role.ASSISTANT and asking.tool_call is not None
        assert (asking.tool_call.id, asking.tool_call.name) == (call.id, call.name)
        assert asking.tool_call.arguments == call.arguments
        assert_generated(asking, asked.model_version)
        assert answering.role == Role.TOOL and answering.tool_result is not None
        assert answering.tool_result.output == result.output
        assert answering.tool_call is not None and answering.tool_call.id == call.id
    assert final.id == asked.turn.message.id
    assert (final.role, final.content, final.tool_call) == (Role.ASSISTANT, asked.turn.message.content, None)
    assert_generated(final, asked.model_version)
    assert final.usage == asked.turn.usage
    expected: list[tuple[str, int]] = []
    for n in range(len(steps)):
        expected += [("ToolCalled", 2 + 2 * n), ("ToolReturned", 3 + 2 * n)]
    assert asked.stored_when == [*expected, ("TurnFinished", len(messages))]


def assert_generated(message: Message, model_version: str) -> None:
    assert message.model_version == model_version
    assert message.usage.prompt_tokens > 0 and message.usage.completion_tokens > 0
    assert message.latency_ms is not None and message.latency_ms > 0


async def test_the_turn_is_recorded_as_events(asked: AskedTurn, store: SqlStore) -> None:
    events = await store.list_events(asked.conversation_id)
    names = [event["name"] for event in events]
    assert names.count("ToolExecuted") == len(asked.turn.steps)
    generated = next(event["payload"] for event in events if event["name"] == "ResponseGenerated")
    assert generated["message_id"] == asked.turn.message.id
    assert generated["model_version"] == asked.model_version
    assert generated["prompt_tokens"] == asked.turn.usage.prompt_tokens
    assert generated["completion_tokens"] == asked.turn.usage.completion_tokens
    assert generated["steps"] == len(asked.turn.steps)


async def test_the_conversation_survives_a_restart(asked: AskedTurn, store: SqlStore) -> None:
    before = await store.get_conversation(asked.conversation_id)
    async with bootstrap(asked.settings) as container:
        after = await container.store.get_conversation(asked.conversation_id)
        assert container.default_agent.id == asked.agent_id  # the default agent is found, not recreated
        agents = await container.store.list_agents()
    assert [a.name for a in agents] == ["default"]
    assert (after.title, after.agent_id) == ("arithmetic", asked.agent_id)
    assert [(m.id, m.role, m.content, m.tool_call, m.usage) for m in after.messages] == [
        (m.id, m.role, m.content, m.tool_call, m.usage) for m in before.messages
    ]
    assert after.messages[-1].content == asked.turn.message.content

"""The dataset builder: turn selection by signal, corrections, masking, de-duplication, split, manifest, and
prompts identical to what the engine was given."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentloop.adapters.tools import builtin_tools
from agentloop.application.agent import AgentService
from agentloop.application.learning.dataset import (
    COMPLETION_END,
    MANIFEST_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
    ConversationForTraining,
    Signal,
    TrainingExample,
    build_dataset,
    examples_from,
    plan_dataset,
    signal_of,
    split,
    split_turns,
    turn_examples,
    turn_signals,
)
from agentloop.application.prompt import END, render_prompt, render_tool_call
from agentloop.application.tools import Tool, ToolContext, ToolRegistry, ToolSchema
from agentloop.domain.learning import Feedback, QualitySignals, Rating
from agentloop.domain.model import Agent, Conversation, Message, ModelConfig, Role, ToolCall, ToolResult
from agentloop.errors import ValidationError
from agentloop.settings import Settings
from fakes import FakeEngine, FakeStore

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SYSTEM = "You are a test assistant."
SCHEMA = {
    "type": "object",
    "properties": {"expression": {"type": "string"}},
    "required": ["expression"],
    "additionalProperties": False,
}


async def _add(arguments: dict[str, Any], context: ToolContext) -> str:
    left, right = arguments["expression"].split("+")
    return str(int(left) + int(right))


ADDER = Tool("adder", "Adds two numbers.", SCHEMA, handler=_add)
TOOLS: list[ToolSchema] = [ADDER]


def call_text(name: str, **arguments: Any) -> str:
    return render_tool_call(ToolCall(name, arguments))


# ----------------------------------------------------------------------------------------------------------
# hand-built conversations
# ----------------------------------------------------------------------------------------------------------


class Chat:
    """Builds a stored conversation turn by turn, the way AgentService stores it."""

    def __init__(self, conversation_id: str = "c1") -> None:
        self.conversation = Conversation("agent", id=conversation_id)

    def add(self, role: Role, content: str = "", **kwargs: Any) -> Message:
        message = Message(self.conversation.id, role, content, **kwargs)
        self.conversation.messages.append(message)
        return message

    def ask(self, text: str) -> Message:
        return self.add(Role.USER, text)

    def call(self, name: str, arguments: dict[str, Any], output: str = "5", ok: bool = True) -> Message:
        call = ToolCall(name, arguments)
        asked = self.add(Role.ASSISTANT, render_tool_call(call), tool_call=call)
        error = None if ok else output
        result = ToolResult(call.id, name, output, ok=ok, error=error)
        self.add(Role.TOOL, output, tool_call=call, tool_result=result)
        return asked

    def answer(self, text: str) -> Message:
        return self.add(Role.ASSISTANT, text)

    def source(
        self, *feedback: Feedback, groupthink: dict[str, float] | None = None
    ) -> ConversationForTraining:
        return ConversationForTraining(self.conversation, SYSTEM, TOOLS, feedback, groupthink or {})


def up(message: Message, **kwargs: Any) -> Feedback:
    return Feedback(message.id, message.conversation_id, rating=Rating.UP, **kwargs)


def down(message: Message, **kwargs: Any) -> Feedback:
    return Feedback(message.id, message.conversation_id, rating=Rating.DOWN, **kwargs)


def tool_turn(chat: Chat, question: str = "What is 2+3?", answer: str = "5") -> tuple[Message, Message]:
    chat.ask(question)
    asked = chat.call("adder", {"expression": "2+3"})
    return asked, chat.answer(answer)


# ----------------------------------------------------------------------------------------------------------
# train and serve never drift: the prompts are the engine's prompts
# ----------------------------------------------------------------------------------------------------------


async def test_example_prompts_are_exactly_what_the_engine_was_given(tmp_path: Path) -> None:
    registry = ToolRegistry(builtin_tools(Settings(data_dir=tmp_path, _env_file=None)))
    agent = Agent("a", ModelConfig(max_tokens=64), ("list_files", "write_file", "calculator"))
    engine = FakeEngine(
        [
            call_text("calculator", expression="1234 * 5678"),
            "1234 * 5678 = 7006652.",
            call_text("write_file", path="n.txt", content="7006652"),
            "Saved it to n.txt.",
            "You are welcome!",
        ]
    )
    store = FakeStore([agent])
    service = AgentService(engine, store, registry, tmp_path)
    conversation = Conversation(agent.id)
    await store.create_conversation(conversation)
    for text in ("What is 1234 * 5678?", "Save that number to n.txt.", "Thanks!"):
        await service.ask(conversation.id, text)

    stored = store.conversations[conversation.id]
    finals = [m for m in stored.messages if m.role == Role.ASSISTANT and m.tool_call is None]
    tools = registry.select(agent.allowed_tools)
    source = ConversationForTraining(stored, agent.system_prompt, tools, [up(m) for m in finals])
    examples = examples_from([source])

    assert [e.prompt for e in examples] == [r.prompt for r in engine.requests]
    assert [e.completion for e in examples] == [
        call_text("calculator", expression="1234 * 5678") + COMPLETION_END,
        "1234 * 5678 = 7006652." + COMPLETION_END,
        call_text("write_file", path="n.txt", content="7006652") + COMPLETION_END,
        "Saved it to n.txt." + COMPLETION_END,
        "You are welcome!" + COMPLETION_END,
    ]
    # The completion is exactly the model turn render_prompt writes once the message is in the history.
    model_steps = [i for i, m in enumerate(stored.messages) if m.role == Role.ASSISTANT]
    for example, index in zip(examples, model_steps, strict=True):
        closed = render_prompt(
            agent.system_prompt, tools, stored.messages[: index + 1], open_model_turn=False
        )
        assert closed == example.prompt + example.completion + "\n"
    # Nothing in these prompts needs masking: the written dataset carries the same text.
    dataset = plan_dataset([source], validation_fraction=0.0, now=NOW)
    assert [e.prompt for e in dataset.train] == [r.prompt for r in engine.requests]


def test_completion_end_comes_from_the_prompt_format() -> None:
    assert COMPLETION_END == "\n" + END


# ----------------------------------------------------------------------------------------------------------
# turns and signals
# ----------------------------------------------------------------------------------------------------------


def test_turns_run_from_a_user_message_to_the_final_answer() -> None:
    chat = Chat()
    tool_turn(chat)
    chat.ask("Hi")
    chat.answer("Hello!")
    chat.ask("unanswered")  # the turn failed before an answer was stored
    chat.call("adder", {"expression": "1+1"})
    turns = split_turns(chat.conversation)
    assert [(t.start, t.end) for t in turns] == [(0, 4), (4, 6)]
    assert turns[0].final.content == "5"
    assert turns[0].model_steps() == [1, 3]


def test_signals_of_a_turn() -> None:
    chat = Chat()
    asked, final = tool_turn(chat)
    turn = split_turns(chat.conversation)[0]
    signals = turn_signals(turn, [down(asked), up(final)], TOOLS, {final.id: 0.5})
    assert signals.rating == Rating.UP  # feedback on the final answer wins
    assert signals.tools_ok is True and signals.schema_valid is True
    assert signals.groupthink_agreement == 0.5 and not signals.corrected


def test_rating_on_any_message_of_the_turn_counts_and_the_latest_wins() -> None:
    chat = Chat()
    asked, _ = tool_turn(chat)
    turn = split_turns(chat.conversation)[0]
    early = down(asked, created_at=NOW)
    late = up(asked, created_at=NOW + timedelta(seconds=1))
    assert turn_signals(turn, [late, early], TOOLS).rating == Rating.UP


def test_a_turn_without_tools_has_no_tool_signals() -> None:
    chat = Chat()
    chat.ask("Hi")
    chat.answer("Hello")
    signals = turn_signals(split_turns(chat.conversation)[0], [], TOOLS)
    assert signals.tools_ok is None and signals.schema_valid is None and signals.rating is None


def test_groupthink_on_another_message_of_the_turn_counts() -> None:
    chat = Chat()
    asked, _ = tool_turn(chat)
    signals = turn_signals(split_turns(chat.conversation)[0], [], TOOLS, {asked.id: 0.25, "other": 0.9})
    assert signals.groupthink_agreement == 0.25


def _selected(source: ConversationForTraining) -> list[Signal]:
    return [e.signal for e in examples_from([source])]


def test_selection_by_signal() -> None:
    chat = Chat()
    _, final = tool_turn(chat)
    assert _selected(chat.source()) == []
    assert _selected(chat.source(up(final))) == [Signal.RATED_UP, Signal.RATED_UP]
    assert _selected(chat.source(down(final))) == []
    assert _selected(chat.source(groupthink={final.id: 0.8})) == [Signal.GROUPTHINK] * 2
    assert _selected(chat.source(groupthink={final.id: 0.0})) == []
    assert _selected(chat.source(down(final, correction="It is 5."))) == [Signal.CORRECTED] * 2


def test_signal_labels_prefer_the_strongest_evidence() -> None:
    assert signal_of(QualitySignals(rating=Rating.UP, corrected=True)) == Signal.CORRECTED
    assert signal_of(QualitySignals(rating=Rating.UP, groupthink_agreement=1.0)) == Signal.RATED_UP
    assert signal_of(QualitySignals(groupthink_agreement=1.0, tools_ok=True)) == Signal.GROUPTHINK
    assert signal_of(QualitySignals(tools_ok=True)) == Signal.TOOL_SUCCESS


def test_failed_tools_or_invalid_calls_make_a_turn_unusable() -> None:
    failed = Chat()
    failed.ask("What is 2+x?")
    failed.call("adder", {"expression": "2+x"}, output="error: boom", ok=False)
    final = failed.answer("I could not.")
    assert _selected(failed.source(up(final))) == []

    invalid = Chat()
    invalid.ask("What is 2+3?")
    invalid.call("adder", {"expr": "2+3"}, output="5")  # the schema wants `expression`
    final = invalid.answer("5")
    assert _selected(invalid.source(up(final))) == []


def test_a_text_correction_replaces_the_answer_and_keeps_good_tool_calls() -> None:
    chat = Chat()
    asked, final = tool_turn(chat, answer="6")
    examples = examples_from([chat.source(down(final, correction="2+3 is 5."))])
    assert [e.completion for e in examples] == [
        call_text("adder", expression="2+3") + COMPLETION_END,
        "2+3 is 5." + COMPLETION_END,
    ]
    assert [e.message_id for e in examples] == [asked.id, final.id]
    assert {e.signal for e in examples} == {Signal.CORRECTED}


def test_a_text_correction_after_a_failed_call_teaches_only_the_answer() -> None:
    chat = Chat()
    chat.ask("What is 2+3?")
    chat.call("adder", {"expression": "2 + three"}, output="error: bad", ok=False)
    final = chat.answer("I don't know.")
    examples = examples_from([chat.source(down(final, correction="5"))])
    assert [e.completion for e in examples] == ["5" + COMPLETION_END]
    # The prompt still shows the failed step: that is what the model saw when it answered.
    assert "error: bad" in examples[0].prompt


def test_a_call_correction_replaces_the_first_call_and_drops_the_rest() -> None:
    chat = Chat()
    chat.ask("Earlier question")
    chat.answer("Earlier answer")
    user = chat.ask("What is 2+3?")
    asked = chat.call("adder", {"expression": "2+2"}, output="4")
    chat.call("adder", {"expression": "4+1"}, output="5")
    final = chat.answer("5")
    fix = ToolCall("adder", {"expression": "2+3"})
    examples = examples_from([chat.source(down(final, correction_call=fix))])
    assert len(examples) == 1
    (example,) = examples
    assert example.completion == render_tool_call(fix) + COMPLETION_END
    history = chat.conversation.messages[: chat.conversation.messages.index(user) + 1]
    assert example.prompt == render_prompt(SYSTEM, TOOLS, history)
    assert example.message_id == asked.id and example.signal == Signal.CORRECTED


def test_a_call_correction_on_a_direct_answer_teaches_the_call() -> None:
    chat = Chat()
    chat.ask("What is 2+3?")
    final = chat.answer("6")
    fix = ToolCall("adder", {"expression": "2+3"})
    (example,) = examples_from([chat.source(Feedback(final.id, final.conversation_id, correction_call=fix))])
    assert example.completion == render_tool_call(fix) + COMPLETION_END
    assert example.message_id == final.id


def test_only_the_turns_with_a_signal_are_used() -> None:
    chat = Chat()
    chat.ask("Hi")
    chat.answer("Hello")
    _, final = tool_turn(chat)
    source = chat.source(up(final))
    turns = split_turns(chat.conversation)
    assert turn_examples(source, turns[0]) == []
    assert len(turn_examples(source, turns[1])) == 2


# ----------------------------------------------------------------------------------------------------------
# masking, de-duplication, split, manifest
# ----------------------------------------------------------------------------------------------------------


def test_prompts_and_completions_are_masked() -> None:
    chat = Chat()
    chat.ask("Mail bob@example.com, my key is sk-abcdefghijklmnopqrstuv123")
    final = chat.answer("Sent to bob@example.com with Bearer abcdefghijkl.")
    dataset = plan_dataset([chat.source(up(final))], validation_fraction=0.0, now=NOW)
    (example,) = dataset.train
    for text in (example.prompt, example.completion):
        assert "bob@example.com" not in text and "abcdefghijkl" not in text
    assert "Mail <EMAIL>, my key is <SECRET>" in example.prompt
    assert example.completion == "Sent to <EMAIL> with Bearer <SECRET>." + COMPLETION_END


def _answered(conversation_id: str, question: str, answer: str) -> ConversationForTraining:
    chat = Chat(conversation_id)
    chat.ask(question)
    return chat.source(up(chat.answer(answer)))


def test_duplicates_are_dropped_after_masking() -> None:
    sources = [
        _answered("c1", "Write to ann@example.com", "Done."),
        _answered("c2", "Write to bob@example.org", "Done."),  # the same once masked
        _answered("c3", "Hi", "Hello"),
    ]
    dataset = plan_dataset(sources, validation_fraction=0.0, now=NOW)
    assert dataset.manifest.total == 2 and dataset.manifest.duplicates == 1
    assert [e.conversation_id for e in dataset.train] == ["c1", "c3"]


def test_a_duplicate_keeps_its_strongest_signal() -> None:
    example = TrainingExample("p", "c", Signal.GROUPTHINK, "c1", "m1")
    stronger = TrainingExample("p", "c", Signal.CORRECTED, "c2", "m2")
    dataset = plan_dataset([], validation_fraction=0.0, extra=[example, stronger], now=NOW)
    assert dataset.train == [stronger]
    assert dataset.manifest.signals["corrected"] == 1 and dataset.manifest.signals["groupthink"] == 0


def _examples(n: int) -> list[TrainingExample]:
    return [TrainingExample(f"prompt {i}", f"answer {i}", Signal.RATED_UP, "c", f"m{i}") for i in range(n)]


def test_split_is_deterministic_and_by_hash() -> None:
    examples = _examples(200)
    train, validation = split(examples, 0.1)
    assert split(list(reversed(examples)), 0.1) == (list(reversed(train)), list(reversed(validation)))
    assert 5 <= len(validation) <= 40 and len(train) + len(validation) == 200
    # An example keeps its side as the dataset grows.
    bigger_train, bigger_validation = split([*examples, *_examples(300)[200:]], 0.1)
    assert {e.digest for e in validation} <= {e.digest for e in bigger_validation}
    assert {e.digest for e in train} <= {e.digest for e in bigger_train}


def test_split_edges() -> None:
    two = _examples(2)
    train, validation = split(two, 0.1)
    assert len(train) == 1 and len(validation) == 1
    train, validation = split(two, 0.99)
    assert len(train) == 1 and len(validation) == 1
    assert split(_examples(1), 0.5)[1] == [] or split(_examples(1), 0.5)[0] == []
    assert split(_examples(5), 0.0) == (_examples(5), [])
    assert split([], 0.1) == ([], [])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValidationError):
            split(two, bad)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_writes_jsonl_and_a_manifest(tmp_path: Path) -> None:
    chat = Chat()
    _, first = tool_turn(chat)
    chat.ask("Hi")
    second = chat.answer("Hello")
    chat.ask("Bad")
    third = chat.answer("Wrong")
    source = chat.source(up(first), down(third, correction="Right"), groupthink={second.id: 1.0})
    extra = TrainingExample(
        "curriculum prompt", "curriculum answer" + COMPLETION_END, Signal.TOOL_SUCCESS, "", ""
    )
    manifest = build_dataset([source], tmp_path / "ds", validation_fraction=0.2, extra=[extra], now=NOW)

    train = _read_jsonl(tmp_path / "ds" / TRAIN_FILE)
    validation = _read_jsonl(tmp_path / "ds" / VALIDATION_FILE)
    assert len(train) == manifest.train and len(validation) == manifest.validation >= 1
    assert manifest.total == 5 and manifest.duplicates == 0
    assert manifest.signals == {"corrected": 1, "rated_up": 2, "groupthink": 1, "tool_success": 1}
    assert set(train[0]) == {"prompt", "completion", "signal", "conversation_id", "message_id"}
    written = json.loads((tmp_path / "ds" / MANIFEST_FILE).read_text())
    assert written == manifest.to_dict()
    assert written["created_at"] == NOW.isoformat() and written["total"] == 5


def test_the_content_hash_is_stable_and_tracks_the_content(tmp_path: Path) -> None:
    sources = [_answered("c1", "Hi", "Hello"), _answered("c2", "Bye", "Goodbye")]
    first = build_dataset(sources, tmp_path / "a", now=NOW)
    again = build_dataset(list(reversed(sources)), tmp_path / "b", now=NOW + timedelta(days=1))
    assert first.content_hash == again.content_hash
    for name in (TRAIN_FILE, VALIDATION_FILE):
        assert sorted(_read_jsonl(tmp_path / "a" / name), key=str) == sorted(
            _read_jsonl(tmp_path / "b" / name), key=str
        )
    changed = build_dataset([*sources[:1], _answered("c2", "Bye", "See you")], tmp_path / "c", now=NOW)
    assert changed.content_hash != first.content_hash


def test_an_empty_dataset_is_written_too(tmp_path: Path) -> None:
    manifest = build_dataset([], tmp_path / "empty", now=NOW)
    assert manifest.total == 0 and (tmp_path / "empty" / TRAIN_FILE).read_text() == ""

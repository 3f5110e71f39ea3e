"""Evaluation: the bundled suites load and are sound, scoring tables, the runner through the real agent."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentloop.adapters.tools import builtin_tools
from agentloop.application.agent import AgentService
from agentloop.application.learning.evaluation import (
    BUILTIN_TOOLS,
    EvalItem,
    EvalReport,
    EvalSettings,
    ExpectedAnswer,
    ExpectedCall,
    ItemResult,
    MemoryStore,
    as_number,
    load_suites,
    numbers_in,
    parse_suite,
    percentile,
    run_eval,
    same_value,
    score_answer,
    score_call,
    suite_names,
    summarise,
)
from agentloop.application.prompt import render_tool_call
from agentloop.application.tools import ToolRegistry
from agentloop.bootstrap import TOOL_ORDER
from agentloop.domain.model import Agent, Conversation, Message, Role, ToolCall, ToolResult
from agentloop.errors import InferenceError, NotFoundError, ValidationError
from agentloop.settings import Settings
from fakes import FakeEngine

SUITES = {"arithmetic", "units", "dates", "files", "multistep", "direct"}


# ----------------------------------------------------------------------------------------------------------
# bundled suites
# ----------------------------------------------------------------------------------------------------------


def test_builtin_tool_names_match_the_real_tools(tmp_path: Path) -> None:
    assert BUILTIN_TOOLS == TOOL_ORDER
    assert set(BUILTIN_TOOLS) == {t.name for t in builtin_tools(Settings(data_dir=tmp_path, _env_file=None))}


def test_every_bundled_suite_loads_and_validates() -> None:
    assert set(suite_names()) == SUITES
    items = load_suites(split=None)
    sizes = Counter(item.suite for item in items)
    for suite in SUITES:
        assert sizes[suite] >= (12 if suite == "multistep" else 24), suite
        heldout = sum(1 for item in items if item.suite == suite and item.split == "heldout")
        assert 0.25 <= heldout / sizes[suite] <= 0.45, suite
    assert len({item.id for item in items}) == len(items)


def _numbers(text: str) -> tuple[str, ...]:
    return tuple(sorted(re.findall(r"\d+(?:\.\d+)?", text)))


def test_heldout_items_do_not_repeat_train_items() -> None:
    for suite in SUITES:
        train = load_suites([suite], split="train")
        heldout = load_suites([suite], split="heldout")
        assert heldout and all(item.split == "heldout" for item in heldout)
        seen_prompts = {item.prompt.casefold() for item in train}
        seen_numbers = {_numbers(item.prompt) for item in train if _numbers(item.prompt)}
        for item in heldout:
            assert item.prompt.casefold() not in seen_prompts, item.id
            assert _numbers(item.prompt) not in seen_numbers, item.id


def test_the_default_is_the_heldout_split_of_every_suite() -> None:
    items = load_suites()
    assert items and {item.split for item in items} == {"heldout"}
    assert {item.suite for item in items} == SUITES


def test_suite_items_are_consistent() -> None:
    for item in load_suites(split=None):
        assert set(item.tools) <= set(BUILTIN_TOOLS)
        assert list(item.tools) == sorted(item.tools, key=BUILTIN_TOOLS.index)
        for call in item.expected_calls:
            assert call.name in item.tools
        if item.suite == "direct":
            assert item.expected_calls == ()
        if item.suite in ("arithmetic", "units"):
            (call,) = item.expected_calls
            assert item.expected_answer is not None and call.result == item.expected_answer.value
        if item.suite == "multistep":
            assert len(item.expected_calls) == 2 and item.expected_answer is not None


def test_unknown_suites_and_splits_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown suites: nope"):
        load_suites(["nope"])
    with pytest.raises(ValidationError, match="split"):
        load_suites(split="test")


GOOD = {
    "id": "x-1",
    "prompt": "What is 2+3?",
    "tools": ["calculator"],
    "expected_call": {"name": "calculator", "result": 5},
    "expected_answer": {"type": "numeric", "value": 5},
    "split": "train",
}


def _line(**changes: Any) -> str:
    item = {**GOOD, **changes}
    return json.dumps({k: v for k, v in item.items() if v != "<drop>"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "Expecting"),
        ("[1, 2]", "JSON object"),
        (_line(split="<drop>"), "exactly the keys"),
        (_line(extra=1), "exactly the keys"),
        (_line(id=""), "non-empty"),
        (_line(tools="calculator"), "'tools'"),
        (_line(tools=["calculator", "teleport"]), "unknown tools: teleport"),
        (_line(tools=["calculator", "calculator"]), "duplicates"),
        (_line(split="dev"), "'split'"),
        (_line(expected_call=[]), "non-empty list"),
        (_line(expected_call="calculator"), "must be an object"),
        (_line(expected_call={"name": "python"}), "not one of the item's tools"),
        (_line(expected_call={"name": "calculator", "args": {}}), "'name', 'arguments'"),
        (_line(expected_call={"name": "calculator", "arguments": [1]}), "'arguments' must be an object"),
        (_line(expected_call={"name": "calculator", "result": True}), "'result' must be a number"),
        (_line(expected_answer={"type": "numeric"}), "'type' and 'value'"),
        (_line(expected_answer={"type": "regex", "value": "x"}), "answer type"),
        (_line(expected_answer={"type": "numeric", "value": "5"}), "must be a number"),
        (_line(expected_answer={"type": "contains", "value": 5}), "non-empty string"),
    ],
)
def test_bad_items_name_the_file_and_line(line: str, message: str) -> None:
    text = _line(id="ok-1") + "\n\n" + line + "\n"
    with pytest.raises(ValidationError, match=re.escape("demo.jsonl:3: ") + ".*" + re.escape(message)):
        parse_suite("demo", text)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValidationError, match=re.escape("demo.jsonl:2: duplicate id 'x-1'")):
        parse_suite("demo", _line() + "\n" + _line())


def test_parsed_items() -> None:
    many = _line(
        tools=["calculator", "write_file"],
        expected_call=[{"name": "calculator"}, {"name": "write_file", "arguments": {"path": "a"}}],
        expected_answer=None,
    )
    none = _line(id="x-2", expected_call=None, expected_answer={"type": "contains", "value": "hi"})
    first, second = parse_suite("demo", many + "\n" + none)
    assert first.tools == ("write_file", "calculator")  # the serving agent's tool order
    assert first.expected_calls == (ExpectedCall("calculator"), ExpectedCall("write_file", {"path": "a"}))
    assert first.expected_answer is None
    assert second.expected_calls == () and second.expected_answer == ExpectedAnswer("contains", "hi")


# ----------------------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------------------


def step(name: str, output: str = "ok", ok: bool = True, **arguments: Any) -> tuple[ToolCall, ToolResult]:
    call = ToolCall(name, arguments)
    return call, ToolResult(call.id, name, output, ok=ok, error=None if ok else output)


CALC_450 = ExpectedCall("calculator", result=450)
WRITE_MILK = ExpectedCall("write_file", {"path": "list.txt", "content": "milk"})


@pytest.mark.parametrize(
    ("expected", "steps", "passed"),
    [
        (CALC_450, [step("calculator", "450", expression="7.5 * 60")], True),
        (CALC_450, [step("calculator", "450.0", expression="450")], True),
        (CALC_450, [step("calculator", "451", expression="451")], False),
        (CALC_450, [step("calculator", "error: bad", ok=False, expression="7.5h")], False),
        (CALC_450, [step("python", "450", code="print(450)")], False),
        (CALC_450, [step("calculator", "not a number", expression="x")], False),
        (
            CALC_450,
            [step("calculator", "12", expression="3*4"), step("calculator", "450", expression="x")],
            True,
        ),
        (WRITE_MILK, [step("write_file", content=" Milk ", path="list.txt")], True),
        (WRITE_MILK, [step("write_file", content="milk", path="list.txt", mode="w")], True),
        (WRITE_MILK, [step("write_file", content="milk!", path="list.txt")], False),
        (WRITE_MILK, [step("write_file", path="list.txt")], False),
        (WRITE_MILK, [], False),
        (ExpectedCall("write_file", {"content": 84}), [step("write_file", content="84.0", path="a")], True),
        (ExpectedCall("python"), [step("python", code="anything")], True),
        (None, [], True),
        (None, [step("calculator", "1", expression="1")], False),
        ([], [step("calculator", "1", expression="1")], False),
        (
            [CALC_450, WRITE_MILK],
            [step("calculator", "450"), step("write_file", content="milk", path="list.txt")],
            True,
        ),
        (
            [WRITE_MILK, CALC_450],
            [step("calculator", "450"), step("write_file", content="milk", path="list.txt")],
            False,
        ),
        ([CALC_450, CALC_450], [step("calculator", "450")], False),
        ([CALC_450, CALC_450], [step("calculator", "450"), step("calculator", "450")], True),
    ],
)
def test_score_call(expected: Any, steps: list[tuple[ToolCall, ToolResult]], passed: bool) -> None:
    assert score_call(expected, steps) is passed


def test_score_call_uses_the_argument_normaliser() -> None:
    def strip_dot_slash(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return {k: v.removeprefix("./") if k == "path" else v for k, v in arguments.items()}

    steps = [step("write_file", content="milk", path="./list.txt")]
    assert not score_call(WRITE_MILK, steps)
    assert score_call(WRITE_MILK, steps, strip_dot_slash)


@pytest.mark.parametrize(
    ("expected", "actual", "same"),
    [
        (450, "450", True),
        (450, 450.0, True),
        ("450", 450.0000001, True),
        (450, 451, False),
        (1, True, False),
        (True, True, True),
        ("abc", " ABC ", True),
        ("abc", 5, False),
        (None, None, True),
        (None, "", False),
        ([1, "a"], ["1", "A"], True),
        ([1, 2], [1], False),
        ([1], "1", False),
        ({"a": {"b": 1}}, {"a": {"b": "1", "c": 2}}, True),
        ({"a": 1}, [1], False),
    ],
)
def test_same_value(expected: object, actual: object, same: bool) -> None:
    assert same_value(expected, actual) is same


@pytest.mark.parametrize(
    ("kind", "value", "answer", "passed"),
    [
        ("exact", "Paris", "  paris. ", True),
        ("exact", "Paris", "Paris is the capital", False),
        ("exact", "New York", "new   york", True),
        ("numeric", 7006652, "1234 * 5678 = 7,006,652.", True),
        ("numeric", 7006652, "It is 7006652.0", True),
        ("numeric", 7006652, "It is 7006651", False),
        ("numeric", 450, "There are 450 minutes in 7.5 hours.", True),
        ("numeric", -5, "The result is -5.", True),
        ("numeric", 0.3, "0.30000000000000004", True),
        ("numeric", 60, "sixty days", False),
        ("numeric", 1.5e-7, "about 1.5e-7", True),
        ("contains", "Rome", "The capital of Italy is rome.", True),
        ("contains", "Rome", "Milan", False),
    ],
)
def test_score_answer(kind: str, value: str | float, answer: str, passed: bool) -> None:
    expected = ExpectedAnswer(kind, float(value) if kind == "numeric" else value)
    assert score_answer(expected, answer) is passed


def test_score_answer_without_expectation_or_answer() -> None:
    assert score_answer(None, None) and score_answer(None, "anything")
    assert not score_answer(ExpectedAnswer("contains", "x"), None)


def test_numbers_in_text() -> None:
    assert numbers_in("2024-03-26") == [2024.0, 3.0, 26.0]
    assert numbers_in("H2O and x2") == []
    assert numbers_in("1,2,3 and 1,234") == [1.0, 2.0, 3.0, 1234.0]
    assert as_number(" 1,234.5 ") == 1234.5 and as_number(".5") == 0.5
    assert as_number("12 apples") is None and as_number(False) is None and as_number(float("nan")) is None


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.95) == 95.0


# ----------------------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------------------


def item(
    id: str, suite: str, tools: tuple[str, ...], calls: tuple[ExpectedCall, ...], answer: Any
) -> EvalItem:
    return EvalItem(id, suite, f"question {id}", tools, calls, answer, "heldout")


def call_text(name: str, **arguments: Any) -> str:
    return render_tool_call(ToolCall(name, arguments))


ITEMS = [
    item("a1", "arithmetic", ("calculator",), (CALC_450,), ExpectedAnswer("numeric", 450.0)),
    item("a2", "arithmetic", ("calculator",), (CALC_450,), ExpectedAnswer("numeric", 450.0)),
    item("a3", "arithmetic", ("calculator",), (CALC_450,), ExpectedAnswer("numeric", 450.0)),
    item("f1", "files", ("write_file",), (WRITE_MILK,), None),
    item("d1", "direct", ("calculator",), (), ExpectedAnswer("contains", "Rome")),
    item("d2", "direct", ("calculator",), (), ExpectedAnswer("contains", "Rome")),
]
SCRIPT: list[str | Exception] = [
    # a1: right call, right answer
    call_text("calculator", expression="7.5 * 60"),
    "7.5 hours are 450 minutes.",
    # a2: an unparseable call, then a wrong answer
    "<tool_call>{not json</tool_call>",
    "I think it is 400.",
    # a3: the engine fails
    InferenceError("backend down"),
    # f1: right call
    call_text("write_file", path="list.txt", content="milk"),
    "Saved.",
    # d1: answered directly
    "Rome.",
    # d2: called a tool although none was needed
    call_text("calculator", expression="1 + 1"),
    "Rome, and 1 + 1 = 2.",
]


async def test_run_eval_scores_a_scripted_engine(tmp_path: Path) -> None:
    engine = FakeEngine(SCRIPT, model_version="v7")
    registry = ToolRegistry(builtin_tools(Settings(data_dir=tmp_path, _env_file=None)))

    def make_service(store: MemoryStore) -> AgentService:
        return AgentService(engine, store, registry, tmp_path / "workspaces")

    report = await run_eval(make_service, ITEMS, EvalSettings(seed=7, max_tokens=64))

    results = {r.id: r for r in report.items}
    assert {k: r.correct for k, r in results.items()} == {
        "a1": True,
        "a2": False,
        "a3": False,
        "f1": True,
        "d1": True,
        "d2": False,
    }
    assert report.accuracy == pytest.approx(3 / 6)
    assert report.version == "v7" and report.seed == 7
    assert report.suites["arithmetic"].n == 3
    assert report.suites["arithmetic"].accuracy == pytest.approx(1 / 3)
    assert report.suites["arithmetic"].valid_call_rate == pytest.approx(1 / 2)
    assert report.suites["files"].valid_call_rate == 1.0 and report.suites["direct"].accuracy == 0.5
    assert results["a1"].answer == "7.5 hours are 450 minutes."
    assert results["a1"].calls[0]["output"] == "450" and results["a1"].calls[0]["valid"]
    assert results["a3"].error == "InferenceError: backend down" and results["a3"].answer is None
    assert all(r.latency_ms > 0 for r in report.items)
    assert report.suites["files"].p95_latency_ms >= report.suites["files"].p50_latency_ms > 0
    # Each item runs with exactly its own tools, greedy, in a fresh workspace.
    assert "- calculator:" in engine.requests[0].prompt and "- write_file:" not in engine.requests[0].prompt
    assert all(r.temperature == 0.0 for r in engine.requests)
    assert (tmp_path / "workspaces").is_dir()


async def test_the_report_round_trips_through_json(tmp_path: Path) -> None:
    engine = FakeEngine(["Rome."])
    registry = ToolRegistry(builtin_tools(Settings(data_dir=tmp_path, _env_file=None)))
    report = await run_eval(lambda store: AgentService(engine, store, registry, tmp_path), ITEMS[4:5])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["accuracy"] == 1.0 and data["suites"]["direct"]["valid_call_rate"] is None
    assert data["items"][0]["id"] == "d1" and data["version"] == "fake-1" and data["seed"] == 0
    assert EvalReport.from_dict(data) == report


def test_a_report_without_items() -> None:
    report = summarise([], "v", 0)
    assert report.accuracy == 0.0 and report.suites == {} and report.item_ids == frozenset()


def test_item_results_count_valid_calls() -> None:
    result = ItemResult("i", "s", True, [{"valid": True}, {"valid": False}], "a", 1.0)
    assert result.valid_calls == 1


async def test_memory_store() -> None:
    store = MemoryStore()
    agent = Agent("a")
    store.add_agent(agent)
    assert await store.get_agent(agent.id) is agent
    conversation = Conversation(agent.id)
    await store.create_conversation(conversation)
    await store.append(conversation.id, [Message(conversation.id, Role.USER, "hi")])
    stored = await store.get_conversation(conversation.id)
    assert [m.content for m in stored.messages] == ["hi"] and conversation.messages == []
    with pytest.raises(NotFoundError):
        await store.get_agent("nope")
    with pytest.raises(NotFoundError):
        await store.get_conversation("nope")
    with pytest.raises(NotFoundError):
        await store.append("nope", [])

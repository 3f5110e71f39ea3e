"""GroupThink: canonicalisation, the weighted vote, sampling through the agent turn, the inference mode."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentloop.application.groupthink import (
    GroupThink,
    GroupThinkConfig,
    GroupThinkService,
    Sample,
    adds_to,
    canonical_call,
    canonical_number,
    canonical_text,
    canonical_value,
    claim_of,
    exemplary,
    vote,
    vote_key,
)
from agentloop.application.tools import Tool, ToolContext, ToolRegistry
from agentloop.domain.events import ConsensusReached
from agentloop.domain.model import Agent, Conversation, Message, ModelConfig, Role, ToolCall, ToolResult
from agentloop.errors import AgentLoopError, ValidationError
from fakes import FakeEngine, FakeStore

# --- canonicalisation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7006652", "7006652"),
        ("7,006,652", "7006652"),
        ("7006652.0", "7006652"),
        ("7.006652e6", "7006652"),
        ("0.50", "0.5"),
        ("-0.0", "0"),
        ("-12.500", "-12.5"),
        ("1E+3", "1000"),
    ],
)
def test_canonical_number(text: str, expected: str) -> None:
    assert canonical_number(text) == expected


@pytest.mark.parametrize("text", ["abc", "", "1..2", "inf", "nan"])
def test_canonical_number_refuses_non_numbers(text: str) -> None:
    with pytest.raises(ValidationError):
        canonical_number(text)


def test_canonical_text_folds_case_space_symbols_and_numbers() -> None:
    assert canonical_text("  The  Answer is 7,006,652.0 ! ") == canonical_text("the answer is 7006652")
    assert canonical_text("1234 * 5678") == canonical_text("1234*5678") == "1234*5678"
    assert canonical_text("hello   world") == "hello world"
    assert canonical_text("file1.txt") == "file1.txt"


def test_canonical_value_sorts_keys_and_reads_numbers_by_value() -> None:
    left = {"path": "a.txt", "content": "milk  ", "n": 450}
    right = {"n": "450.0", "content": "milk", "path": "a.txt"}
    assert canonical_value(left) == canonical_value(right)
    assert canonical_value([True, None, 1.5]) == [True, None, "1.5"]
    assert canonical_value({"x": {"b": 1, "a": 2}}) == {"x": {"a": "2", "b": "1"}}


def test_canonical_call_ignores_argument_order_and_spacing() -> None:
    a = ToolCall("calculator", {"expression": "1234 * 5678"})
    b = ToolCall("calculator", {"expression": "1234*5678 "})
    c = ToolCall("python", {"expression": "1234*5678"})
    assert canonical_call(a) == canonical_call(b) != canonical_call(c)
    d = ToolCall("write_file", {"path": "x.txt", "content": "1"})
    e = ToolCall("write_file", {"content": "1.0", "path": "x.txt"})
    assert canonical_call(d) == canonical_call(e)


def test_claim_is_what_the_answer_adds_to_the_question() -> None:
    question = "What is 1234 * 5678?"
    assert claim_of("7006652 (1234 * 5678) = 7006652.", question) == ("7006652",)
    assert claim_of("The answer is 7,006,652.", question) == ("7006652",)
    assert claim_of("7006651", question) != claim_of("7006652", question)
    assert claim_of("Madrid.", "What is the capital of Spain?") == claim_of(
        "The capital of Spain is Madrid", "What is the capital of Spain?"
    )
    assert claim_of("It was a Thursday.", "What day of the week was 1989-11-09?") == ("thursday",)
    # Only restating the question: the whole text stands as the claim.
    assert claim_of("What is 1234 * 5678?", question) == (canonical_text(question),)


numbers = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**6), max_value=10**6),
)


@given(numbers)
def test_number_spellings_agree(value: int | Decimal) -> None:
    plain = format(Decimal(value), "f")
    padded = plain + ("0" if "." in plain else ".0")
    assert canonical_number(plain) == canonical_number(padded)
    assert Decimal(canonical_number(plain)) == Decimal(value)


@given(st.integers(min_value=1000, max_value=10**9))
def test_thousands_separators_do_not_change_a_number(value: int) -> None:
    assert canonical_number(f"{value:,}") == canonical_number(str(value))


@given(st.text(max_size=60))
def test_canonical_text_is_idempotent_and_never_fails(text: str) -> None:
    once = canonical_text(text)
    assert canonical_text(once) == once


@given(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=6, unique=True), st.randoms())
def test_argument_order_never_changes_the_key(keys: list[str], rnd: Any) -> None:
    arguments = {key: f"v{i}" for i, key in enumerate(keys)}
    shuffled = list(arguments.items())
    rnd.shuffle(shuffled)
    assert canonical_call(ToolCall("t", arguments)) == canonical_call(ToolCall("t", dict(shuffled)))


@given(st.text(max_size=40), st.text(max_size=40))
def test_vote_key_is_json_and_total(answer: str, question: str) -> None:
    key = json.loads(vote_key((), answer, question))
    assert key["calls"] == [] and isinstance(key["claim"], list) and key["claim"]


# --- the vote -----------------------------------------------------------------------------------------------


def step(name: str, ok: bool = True, output: str = "42", **arguments: Any) -> tuple[ToolCall, ToolResult]:
    call = ToolCall(name, arguments)
    return call, ToolResult(call.id, name, output if ok else "error: bad", ok=ok, error=None if ok else "bad")


def sample(
    index: int, answer: str | None, *steps: tuple[ToolCall, ToolResult], error: str | None = None
) -> Sample:
    return Sample(index, tuple(steps), answer, error=error)


def test_majority_wins_and_dissent_is_reported() -> None:
    samples = [
        sample(0, "41"),
        sample(1, "The answer is 42.", step("calculator", expression="6*7")),
        sample(2, "42", step("calculator", expression="6 * 7")),
    ]
    consensus = vote(samples, "What is 6*7?")
    assert consensus.winner.index == 1
    # "41" came from no tool and not from the question: a guess, it weighs failed_tool_weight (0.25).
    assert consensus.agreement == pytest.approx(2 / 2.25)
    assert consensus.votes[0].samples == (1, 2)
    assert [v.samples for v in consensus.dissent] == [(0,)]
    assert consensus.passes(0.85) and not consensus.passes(0.9)
    data = consensus.to_dict()
    assert data["answer"] == "The answer is 42." and data["dissent"][0]["answer"] == "41"


def test_tie_goes_to_the_earliest_sample() -> None:
    consensus = vote([sample(0, "10"), sample(1, "20"), sample(2, "20"), sample(3, "10")], "q")
    assert consensus.winner.index == 0
    assert consensus.agreement == pytest.approx(0.5)


def test_all_disagree_gives_the_first_sample_and_low_agreement() -> None:
    consensus = vote([sample(i, str(i + 1)) for i in range(4)], "q")
    assert consensus.winner.index == 0
    assert consensus.agreement == pytest.approx(0.25)
    assert len(consensus.dissent) == 3
    assert not consensus.passes(0.6)


def test_failed_tools_weigh_less_than_a_clean_answer() -> None:
    failed_a = sample(0, "?", step("calculator", ok=False, expression="hello"))
    failed_b = sample(1, "?", step("calculator", ok=False, expression="hello"))
    clean = sample(2, "Hello! How can I help?")
    consensus = vote([failed_a, failed_b, clean], "Hello!", failed_tool_weight=0.25)
    assert consensus.winner.index == 2
    assert consensus.agreement == pytest.approx(1 / 1.5)
    assert consensus.passes(0.6)
    # With failures counting fully the two failed samples would have won, and could never label.
    plain = vote([failed_a, failed_b, clean], "Hello!", failed_tool_weight=1.0)
    assert plain.winner.index == 0 and not plain.passes(0.1)


def test_crashed_samples_count_nothing() -> None:
    consensus = vote([sample(0, None, error="overflow"), sample(1, "5"), sample(2, None, error="boom")], "q")
    assert consensus.winner.index == 1 and consensus.agreement == 1.0


def test_vote_refuses_bad_input() -> None:
    with pytest.raises(ValidationError):
        vote([], "q")
    with pytest.raises(ValidationError):
        vote([sample(0, "1")], "q", failed_tool_weight=2.0)


def test_config_validates() -> None:
    with pytest.raises(ValidationError):
        GroupThinkConfig(samples=0)
    with pytest.raises(ValidationError):
        GroupThinkConfig(threshold=0)
    with pytest.raises(ValidationError):
        GroupThinkConfig(temperature=5)


# --- sampling through the real agent turn ------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}


def call_text(name: str, **arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


async def multiply(arguments: dict[str, Any], context: ToolContext) -> str:
    left, right = arguments["expression"].replace(" ", "").split("*")
    context.workspace.mkdir(parents=True, exist_ok=True)
    (context.workspace / "last.txt").write_text(arguments["expression"])
    return str(int(left) * int(right))


def tools() -> ToolRegistry:
    return ToolRegistry([Tool("calculator", "Multiplies.", SCHEMA, handler=multiply)])


def world(
    tmp_path: Path, replies: list[str | Exception], **config: Any
) -> tuple[GroupThink, Agent, FakeEngine]:
    engine = FakeEngine(replies)
    agent = Agent("a", ModelConfig(max_tokens=64), ("calculator",), system_prompt="Be brief.")
    settings = GroupThinkConfig(**{"samples": 3, **config})
    return GroupThink(engine, tools(), tmp_path / "ws", settings), agent, engine


async def test_samples_run_their_tools_with_own_seed_and_temperature(tmp_path: Path) -> None:
    replies: list[str | Exception] = [
        call_text("calculator", expression="6*7"),
        "42",
        call_text("calculator", expression="6 * 7"),
        "6*7 = 42.",
        "41",
    ]
    groupthink, agent, engine = world(tmp_path, replies, temperature=0.9, personas=("Think first.",))
    consensus = await groupthink.consensus(agent, [], "What is 6*7?")
    assert consensus.winner.index == 0 and consensus.agreement == pytest.approx(2 / 2.25)  # "41": a guess
    assert [s.seed for s in consensus.samples] == [0, 1, 2]
    assert {r.temperature for r in engine.requests} == {0.9}
    assert {r.seed for r in engine.requests} == {0, 1, 2}
    assert all("Be brief. Think first." in r.prompt for r in engine.requests)
    winner = consensus.winner
    assert [m.role for m in winner.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert winner.workspace is not None and (winner.workspace / "last.txt").exists()
    groupthink.discard(consensus)
    assert not winner.workspace.exists()


async def test_one_crashing_sample_does_not_sink_the_vote(tmp_path: Path) -> None:
    groupthink, agent, _ = world(tmp_path, [AgentLoopError("engine down"), "5", "5"])
    consensus = await groupthink.consensus(agent, [], "2+3?")
    assert consensus.samples[0].error is not None
    assert consensus.agreement == 1.0 and consensus.winner.index == 1


async def test_no_sample_finishing_is_an_error(tmp_path: Path) -> None:
    groupthink, agent, _ = world(tmp_path, [AgentLoopError("down")] * 3)
    with pytest.raises(AgentLoopError, match="no groupthink sample"):
        await groupthink.consensus(agent, [], "2+3?")


async def test_service_stores_the_consensus_turn_and_its_label(tmp_path: Path) -> None:
    replies: list[str | Exception] = [call_text("calculator", expression="6*7"), "42", "42", "40"]
    groupthink, agent, _ = world(tmp_path, replies)
    store = FakeStore([agent])
    conversation = Conversation(agent.id)
    await store.create_conversation(conversation)
    answer = await GroupThinkService(groupthink, store).answer(conversation.id, "What is 6*7?")
    # Samples 0 (called the tool) and 1 (answered from memory) differ in calls: 1 vs 1 vs 1 -> earliest wins.
    assert answer.consensus.winner.index == 0 and not answer.labeled
    stored = store.conversations[conversation.id].messages
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert all(m.conversation_id == conversation.id for m in stored)
    assert stored[-1].id == answer.message.id and stored[-1].content == "42"
    events = [e for e in store.events if isinstance(e, ConsensusReached)]
    assert len(events) == 1 and events[0].message_id == answer.message.id and events[0].samples == 3
    # The winner's files land in the conversation's own workspace; the drafts are gone.
    assert (tmp_path / "ws" / conversation.id / "last.txt").read_text() == "6*7"
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == [conversation.id]


async def test_service_refuses_an_empty_message(tmp_path: Path) -> None:
    groupthink, agent, _ = world(tmp_path, [])
    with pytest.raises(ValidationError):
        await GroupThinkService(groupthink, FakeStore([agent])).answer("x", "  ")


def test_a_lone_clean_sample_is_no_consensus_when_support_is_required() -> None:
    failed = [sample(i, "?", step("write_file", ok=False, path="a")) for i in range(2)]
    wrote = step("write_file", path="b", output="wrote 1 bytes to b")
    consensus = vote([*failed, sample(2, "Saved.", wrote)], "Save it")
    assert consensus.winner.index == 2 and consensus.support == 1
    assert consensus.passes(0.6) and not consensus.passes(0.6, min_support=2)
    # Support is capped by the number of samples: a single sample may label when N is 1.
    assert vote([sample(0, "Paris.")], "Capital of France?").passes(1.0, min_support=2)


def test_a_crashed_script_is_a_failed_tool_run() -> None:
    call = ToolCall("python", {"code": "1/0"})
    crashed = ToolResult(call.id, "python", "[stderr]\nZeroDivisionError\n[exit code 1]", ok=True)
    killed = ToolResult(call.id, "python", "[killed by signal SIGKILL]", ok=True)
    fine = ToolResult(call.id, "python", "printed [exit code 1] mid-way\n42", ok=True)
    assert not Sample(0, ((call, crashed),), "x").clean
    assert not Sample(0, ((call, killed),), "x").tools_ok
    assert Sample(0, ((call, fine),), "x").clean


def test_a_winner_that_restates_the_question_teaches_nothing_and_repeats_are_collapsed() -> None:
    twice = sample(
        0,
        "31.",
        step("write_file", path="m.txt", content="31*29"),
        step("write_file", path="m.txt", content="31 * 29"),
    )
    assert twice.repeats and twice.clean and not twice.collapsed().repeats
    consensus = vote([twice, replace(twice, index=1)], "Compute 31 * 29 and save it to m.txt.")
    assert consensus.agreement == 1.0 and not consensus.teachable and not consensus.passes(0.5)
    question = "How many days are between 2022-11-11 and 2023-01-01?"
    echo = vote([sample(i, "2022-11-11 is 2023-01-01.") for i in range(3)], question)
    assert echo.agreement == 1.0 and not echo.passes(0.5)
    assert adds_to("51 days.", question) and not adds_to("2022-11-11 is 2023-01-01.", question)


def test_an_answer_contradicting_its_calculator_is_ungrounded_and_weighs_less() -> None:
    right = sample(0, "3349076 (2468 * 1357).", step("calculator", output="3349076", expression="2468*1357"))
    wrong = sample(1, "10000000.", step("calculator", output="3349076", expression="2468*1357"))
    wrong_too = replace(wrong, index=2)
    assert right.grounded("What is 2468 * 1357?") and not wrong.grounded("What is 2468 * 1357?")
    # Two ungrounded samples (0.25 each) lose to one grounded one; alone it is no consensus.
    consensus = vote([right, wrong, wrong_too], "What is 2468 * 1357?")
    assert consensus.winner.index == 0 and consensus.agreement == pytest.approx(1 / 1.5)
    assert consensus.teachable and not consensus.passes(0.6, min_support=2)
    # An output that is not one number (a file write, a listing) leaves every answer grounded.
    saved = sample(0, "Saved.", step("write_file", output="wrote 5 bytes to a.txt", path="a.txt"))
    assert saved.grounded() and sample(0, "Paris.").grounded()
    assert not vote([wrong, replace(wrong, index=1)], "What is 2468 * 1357?").passes(0.5)


def test_a_repeated_call_agrees_with_the_same_call_made_once() -> None:
    twice = sample(
        0,
        "3349076.",
        step("calculator", output="3349076", expression="2468 * 1357"),
        step("calculator", output="3349076", expression="2468*1357"),
    )
    once = sample(1, "3349076", step("calculator", output="3349076", expression="2468 * 1357"))
    other = sample(2, "2468.")
    consensus = vote([twice, once, other], "What is 2468 * 1357?")
    assert consensus.support == 2 and consensus.agreement == pytest.approx(2 / 3)
    # The earliest member speaks, its repeated call collapsed away.
    assert consensus.winner.index == 0 and len(consensus.winner.steps) == 1
    assert consensus.passes(0.6, min_support=2)


async def test_samples_run_side_by_side_up_to_the_concurrency(tmp_path: Path) -> None:
    groupthink, agent, engine = world(tmp_path, ["5", "5", "4"], samples=3)
    groupthink.concurrency = 3
    consensus = await groupthink.consensus(agent, [], "2+3?")
    assert [s.index for s in consensus.samples] == [0, 1, 2]
    assert consensus.winner.index == 0 and consensus.agreement == pytest.approx(2 / 3)
    assert {r.seed for r in engine.requests} == {0, 1, 2}


def test_the_label_drops_a_repeated_call_and_its_result() -> None:
    first = step("calculator", output="29376", expression="612 * 48")
    again = step("calculator", output="29376", expression="612*48")
    turn = [
        Message("c", Role.USER, "What is 612 * 48?"),
        Message("c", Role.ASSISTANT, tool_call=first[0]),
        Message("c", Role.TOOL, "29376", tool_call=first[0], tool_result=first[1]),
        Message("c", Role.ASSISTANT, tool_call=again[0]),
        Message("c", Role.TOOL, "29376", tool_call=again[0], tool_result=again[1]),
        Message("c", Role.ASSISTANT, "29376."),
    ]
    looped = Sample(0, (first, again), "29376.", tuple(turn))
    consensus = vote([looped, replace(looped, index=1), sample(2, "612.")], "What is 612 * 48?")
    assert consensus.passes(0.6, min_support=2)
    assert consensus.winner.steps == (first,) and not consensus.winner.repeats
    assert [m.id for m in consensus.winner.messages] == [turn[i].id for i in (0, 1, 2, 5)]
    # The samples themselves are reported as they ran.
    assert consensus.samples[0].steps == (first, again)


def test_a_number_from_nowhere_is_ungrounded() -> None:
    question = "Compute 31 * 29 and save the result to mult.txt."
    wrote = step("write_file", output="wrote 7 bytes to mult.txt", path="mult.txt", content="31 * 29")
    assert not sample(0, "31 (17 * 29) = 31.", wrote).grounded(question)
    assert sample(0, "Saved 31 * 29 to mult.txt.", wrote).grounded(question)
    assert not sample(0, "4.5 hours (4.5 * 24 = 16.5).").grounded("How many minutes are in 4.5 hours?")
    product = step("calculator", output="899", expression="31 * 29")
    assert sample(0, "31 * 29 = 899.", product).grounded(question)
    # Two samples agreeing on an invented number are no label.
    invented = [sample(i, "31 (17 * 29) = 31.", wrote) for i in range(3)]
    assert not vote(invented, question).passes(0.5)


def test_a_turn_must_act_on_the_file_the_text_and_the_numbers_the_question_names() -> None:
    question = "Save 'tea' to drinks.txt."
    right = sample(0, "Saved.", step("write_file", output="wrote 3 bytes", path="drinks.txt", content="tea"))
    assert right.uses_question(question)
    # Copied from a demonstration: the wrong file, the wrong text, or no call at all.
    assert not sample(0, "Saved.", step("write_file", path="drink.txt", content="tea")).uses_question(
        question
    )
    assert not sample(0, "Saved.", step("write_file", path="drinks.txt", content="te")).uses_question(
        question
    )
    assert not sample(0, "I saved 'tea' to drinks.txt.").uses_question(question)
    # Quoted text may be in the answer instead ("tell me what it says"); apostrophes are no quotes.
    told = sample(0, "It says 'hi'.", step("read_file", output="hi", path="a.txt"))
    assert told.uses_question("What's in a.txt? Does it say 'hi'?")
    dates = "How many days are between 2022-11-11 and 2023-01-01?"
    itself = "from datetime import date\nprint((date(2022, 11, 11) - date(2022, 11, 11)).days)"
    between = "from datetime import date\nprint((date(2023, 1, 1) - date(2022, 11, 11)).days)"
    assert not sample(0, "0 days.", step("python", output="0", code=itself)).uses_question(dates)
    assert sample(0, "51 days.", step("python", output="51", code=between)).uses_question(dates)
    # A parenthesised remark is no operand; a parenthesised sum is.
    year_day = step("python", output="61", code="print(date(2020, 3, 1).timetuple().tm_yday)")
    assert sample(0, "Day 61.", year_day).uses_question("What day of the year (1 to 366) is 2020-03-01?")
    partial = step("calculator", output="341", expression="31 * 11")
    assert not sample(0, "341.", partial).uses_question("What is (31 + 19) * 11?")
    # A tool-less turn is not asked for the numbers (a direct answer may mention a year).
    assert sample(0, "France won in 2018.").uses_question("Who won the World Cup in 2018?")
    # A vote won by copies teaches nothing.
    copies = [sample(i, "Saved.", step("write_file", path="drink.txt", content="tea")) for i in range(3)]
    assert not vote(copies, question).passes(0.5)


@given(st.text(max_size=80), st.text(max_size=40))
def test_uses_question_never_fails(question: str, argument: str) -> None:
    turn = sample(0, argument, step("write_file", path=argument, content=argument))
    assert isinstance(turn.uses_question(question), bool)
    assert sample(0, None).uses_question(question) in (True, False)


def test_an_answer_that_reports_what_the_file_says_teaches_even_if_the_question_said_it() -> None:
    question = "Write 'la la' to song.txt, then read the file back and tell me what it says."
    wrote = step("write_file", output="wrote 5 bytes to song.txt", path="song.txt", content="la la")
    read = step("read_file", output="la la", path="song.txt")
    assert exemplary(sample(0, "The file says: la la", wrote, read), question)
    assert not exemplary(sample(0, "The file says it.", wrote, read), question)

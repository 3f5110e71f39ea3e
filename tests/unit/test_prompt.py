"""The prompt format and the reply parser: one source of truth for serving and training."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agentloop.application.prompt import (
    CALL_CLOSE,
    CALL_OPEN,
    ParsedCall,
    call_schema,
    could_become_call,
    decision_constraint,
    parse_reply,
    render_prompt,
    render_tool_call,
)
from agentloop.application.tools import ToolExample, ToolSchema
from agentloop.domain.model import Message, Role, ToolCall, ToolResult

CALC = ToolSchema(
    "calculator",
    "Evaluates arithmetic.",
    {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    ToolExample("What is 17 * 23?", {"expression": "17 * 23"}, "391", "391 (17 * 23 = 391)."),
)
CLOCK = ToolSchema("current_time", "Tells the time.", {"type": "object", "properties": {}})


def test_gemma_turns_and_open_model_turn() -> None:
    prompt = render_prompt("Be brief.", [], [Message("c", Role.USER, "Hi")])
    assert prompt == "<start_of_turn>user\nBe brief.\n\nHi\n<end_of_turn>\n<start_of_turn>model\n"


def test_tools_examples_and_history_render_in_order() -> None:
    call = ToolCall("calculator", {"expression": "2+2"})
    messages = [
        Message("c", Role.USER, "What is 2+2?"),
        Message("c", Role.ASSISTANT, tool_call=call),
        Message("c", Role.TOOL, "4", tool_call=call, tool_result=ToolResult(call.id, "calculator", "4")),
    ]
    prompt = render_prompt("Sys.", [CALC], messages)
    assert prompt.index("- calculator: Evaluates arithmetic.") < prompt.index("What is 17 * 23?")
    assert prompt.index("What is 17 * 23?") < prompt.index("What is 2+2?")
    assert render_tool_call(call) in prompt
    assert '<tool_result name="calculator">\n4\n</tool_result>' in prompt
    assert prompt.endswith("<start_of_turn>model\n")


def test_prefix_is_stable_across_conversations() -> None:
    first = render_prompt("Sys.", [CALC], [Message("a", Role.USER, "one")])
    second = render_prompt("Sys.", [CALC], [Message("b", Role.USER, "two")])
    common = len(first) - len("one\n<end_of_turn>\n<start_of_turn>model\n")
    assert first[:common] == second[:common]


def test_leading_assistant_message_gets_its_own_user_turn() -> None:
    prompt = render_prompt("Sys.", [], [Message("c", Role.ASSISTANT, "Hello")])
    assert prompt.startswith("<start_of_turn>user\nSys.\n<end_of_turn>\n<start_of_turn>model\nHello")


def test_constraints_per_choice() -> None:
    assert decision_constraint([], "auto") is None
    auto = decision_constraint([CALC, CLOCK], "auto")
    assert auto is not None and auto.allow_text and auto.allow_call
    assert len(auto.call_schema["anyOf"]) == 2
    required = decision_constraint([CALC], "required")
    assert required is not None and not required.allow_text
    none = decision_constraint([CALC], "none")
    assert none is not None and none.allow_text and not none.allow_call
    named = decision_constraint([CALC, CLOCK], "current_time")
    assert named is not None and named.call_schema["properties"]["name"] == {"const": "current_time"}
    assert decision_constraint([CALC], "missing") is None


def test_call_schema_pins_the_name() -> None:
    schema = call_schema([CALC])
    assert schema["properties"]["name"] == {"const": "calculator"}
    assert schema["required"] == ["name", "arguments"]


def test_parse_reply_cases() -> None:
    assert parse_reply("  The answer is 4. ") == "The answer is 4."
    parsed = parse_reply(render_tool_call(ToolCall("calculator", {"expression": "1+1"})))
    assert isinstance(parsed, ParsedCall) and parsed.call is not None
    assert parsed.call.arguments == {"expression": "1+1"}
    for broken in [CALL_OPEN + "{", CALL_OPEN + "[1]", CALL_OPEN + '{"name": "x", "arguments": 3}']:
        result = parse_reply(broken)
        assert isinstance(result, ParsedCall) and result.call is None and result.error


def test_could_become_call() -> None:
    assert could_become_call("<tool")
    assert could_become_call(CALL_OPEN + '{"na')
    assert not could_become_call("The")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    name=st.text(min_size=1, max_size=20),
    arguments=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
)
def test_rendered_calls_parse_back(name: str, arguments: dict[str, Any]) -> None:
    parsed = parse_reply(render_tool_call(ToolCall(name, arguments)))
    assert isinstance(parsed, ParsedCall) and parsed.call is not None
    assert (parsed.call.name, parsed.call.arguments) == (name, arguments)


@given(st.text(max_size=200))
def test_parse_reply_never_raises(text: str) -> None:
    result = parse_reply(text)
    assert isinstance(result, str | ParsedCall)


@given(st.text(max_size=100))
def test_text_not_starting_with_call_tag_is_an_answer(text: str) -> None:
    if not text.strip().startswith(CALL_OPEN):
        assert parse_reply(text) == text.strip()
    else:
        assert isinstance(parse_reply(text), ParsedCall)


def test_call_json_round_trip_with_close_tag_inside_string() -> None:
    body = json.dumps({"name": "python", "arguments": {"code": "print(1)"}})
    parsed = parse_reply(f"{CALL_OPEN}{body}{CALL_CLOSE} trailing")
    assert isinstance(parsed, ParsedCall) and parsed.call is not None

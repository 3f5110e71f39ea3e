"""The openai backend's check of a free greedy decode against the tool-call constraint: keep it only when the
grammar would have produced the same reply."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from agentloop.adapters.inference.remote import (
    _checked_call,
    _Verdict,
    _verdict,
    estimate_tokens,
    ollama_model_name,
)
from agentloop.application.ports import OutputConstraint

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"const": "calculator"},
        "arguments": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
    "required": ["name", "arguments"],
}
AUTO = OutputConstraint(SCHEMA, "<tool_call>", "</tool_call>")
REQUIRED = OutputConstraint(SCHEMA, "<tool_call>", "</tool_call>", allow_text=False)
NONE = OutputConstraint(SCHEMA, "<tool_call>", "</tool_call>", allow_call=False)
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'


def test_verdicts() -> None:
    assert _verdict("", AUTO) == _Verdict.UNDECIDED
    assert _verdict("<tool", AUTO) == _Verdict.UNDECIDED
    assert _verdict(CALL, AUTO) == _Verdict.UNDECIDED
    assert _verdict("The answer", AUTO) == _Verdict.TEXT
    assert _verdict(" leading space", AUTO) == _Verdict.INVALID  # the grammar forbids it
    assert _verdict("<b>bold", AUTO) == _Verdict.INVALID
    assert _verdict("The answer", REQUIRED) == _Verdict.INVALID
    assert _verdict("Hello", NONE) == _Verdict.TEXT
    assert _verdict("<tool", NONE) == _Verdict.INVALID


def test_checked_calls() -> None:
    assert _checked_call(CALL + " trailing text", AUTO) == CALL
    assert _checked_call(CALL.replace("calculator", "python"), AUTO) is None  # not in the schema
    assert _checked_call('<tool_call>{"name": "calculator"</tool_call>', AUTO) is None  # broken JSON
    assert _checked_call(CALL[:-3], AUTO) is None  # cut before the suffix
    assert _checked_call(CALL, NONE) is None


@given(st.text(max_size=200))
def test_arbitrary_model_output_never_passes_as_an_invalid_call(text: str) -> None:
    checked = _checked_call(text, AUTO)
    if checked is not None:
        body = json.loads(checked[len("<tool_call>") : -len("</tool_call>")])
        assert body["name"] == "calculator" and isinstance(body["arguments"]["expression"], str)


@given(st.text(max_size=30))
def test_ollama_model_names_are_safe(version: str) -> None:
    name = ollama_model_name(version)
    assert name.startswith("agentloop-") and all(
        ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name
    )


def test_token_estimate_over_counts() -> None:
    assert estimate_tokens("") == 1 and estimate_tokens("abcdef") == 3

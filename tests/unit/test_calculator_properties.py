"""Property tests of the calculator: exact integer arithmetic; any input gives a number or a ToolError."""

from __future__ import annotations

import math
import operator

from hypothesis import given, settings
from hypothesis import strategies as st

from agentloop.adapters.tools.calculator import evaluate, format_number
from agentloop.errors import ToolError

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
BIG = 10**30
TOKENS = [*"0123456789+-*/%^().,e x", "**", "//", "9" * 40, "sqrt(", "log(", "max(", "pi", "1e308"]


@given(
    a=st.integers(min_value=-BIG, max_value=BIG),
    b=st.integers(min_value=-BIG, max_value=BIG),
    op=st.sampled_from(sorted(OPERATORS)),
)
def test_integer_arithmetic_is_exact(a: int, b: int, op: str) -> None:
    # Parenthesise b so "1--2" and "1-(-2)" both mean what Python means.
    assert evaluate(f"{a}{op}({b})") == OPERATORS[op](a, b)
    if b >= 0:
        assert evaluate(f"{a}{op}{b}") == OPERATORS[op](a, b)


@given(a=st.integers(min_value=-BIG, max_value=BIG), b=st.integers(min_value=1, max_value=BIG))
def test_integer_division_matches_python(a: int, b: int) -> None:
    assert evaluate(f"({a}) // {b}") == a // b
    assert evaluate(f"({a}) % {b}") == a % b


@settings(max_examples=500)
@given(text=st.text(max_size=200))
def test_any_text_gives_a_number_or_a_tool_error(text: str) -> None:
    try:
        result = evaluate(text)
    except ToolError:
        return
    assert isinstance(result, int | float) and not isinstance(result, bool)


@settings(max_examples=300)
@given(text=st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_arithmetic_looking_text_gives_a_number_or_a_tool_error(text: str) -> None:
    try:
        result = evaluate(text)
    except ToolError:
        return
    assert isinstance(result, int | float)
    format_number(result)


@given(st.integers())
def test_format_number_round_trips_ints(value: int) -> None:
    assert int(format_number(value)) == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_number_keeps_twelve_significant_digits(value: float) -> None:
    text = format_number(value)
    assert math.isclose(float(text), value, rel_tol=1e-11, abs_tol=1e-300)
    assert not text.endswith(".0")

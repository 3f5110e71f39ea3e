"""A safe arithmetic evaluator: the expression is parsed with `ast` and only whitelisted nodes evaluated."""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections.abc import Callable
from typing import Any

from agentloop.application.tools import Tool, ToolContext, ToolExample
from agentloop.errors import ToolError

Number = int | float

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 10_000
MAX_DEPTH = 100
# 10**1000 needs 3322 bits; anything bigger is refused before Python spends time or memory building it.
MAX_RESULT_BITS = 3322
# Integral floats below this are shown as integers; above it a float has lost integer precision anyway.
INTEGRAL_FLOAT_LIMIT = 1e15

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

# name -> (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "log": (math.log, 1, 2),
    "log10": (math.log10, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "min": (min, 1, 20),
    "max": (max, 1, 20),
}


def _divide(left: Number, right: Number) -> Number:
    # Keep exact integers when the division is exact, so 10/2 is 5 and big quotients keep every digit.
    if isinstance(left, int) and isinstance(right, int) and right != 0 and left % right == 0:
        return left // right
    return left / right


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
    # Estimate the size from bit lengths first, so 7**9999 is refused before Python spends time building it.
    estimated_bits = (abs(base).bit_length() - 1) * exponent if isinstance(base, int) else 0
    if isinstance(exponent, int) and estimated_bits > MAX_RESULT_BITS:
        raise ToolError("result is too large (limit 10**1000)")
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("result is a complex number")
    return result


BINARY_OPERATORS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _divide,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}

UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}

_TIMES_BETWEEN_NUMBERS = re.compile(r"(?<=[\d.)])\s*[xX]\s*(?=[\d.(])")
_HEX_PREFIX = re.compile(r"(?<![\w.])0$")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression; raise ToolError for anything that is not plain arithmetic."""
    tree = _parse(_normalise(expression))
    _check_depth(tree)
    return _eval(tree.body)


def format_number(value: int | float) -> str:
    """Format a result: ints exactly, floats with up to 12 significant digits and no trailing '.0'."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < INTEGRAL_FLOAT_LIMIT:
        return str(int(value))
    return f"{value:.12g}"


def _normalise(expression: str) -> str:
    text = expression.strip()
    if not text:
        raise ToolError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is too long ({len(text)} characters, limit {MAX_EXPRESSION_CHARS})")
    text = text.replace("^", "**").replace("×", "*").replace("÷", "/").replace("−", "-")
    return _TIMES_BETWEEN_NUMBERS.sub(_times_or_hex, text)


def _times_or_hex(match: re.Match[str]) -> str:
    # "3x4" and "3 x 4" mean multiplication, but "0x10" is a hexadecimal literal and stays as it is.
    if len(match.group(0)) == 1 and _HEX_PREFIX.search(match.string, 0, match.start()):
        return match.group(0)
    return "*"


def _parse(text: str) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for "1(2)"; the walker refuses it anyway
            return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"invalid expression: {exc.msg}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ToolError("invalid expression") from exc


def _check_depth(tree: ast.AST) -> None:
    # The walker recurses; bounding the depth up front keeps "------...1" from hitting RecursionError.
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ToolError(f"expression is nested too deeply (limit {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _eval(node: ast.expr) -> Number:
    try:
        return _checked(_eval_node(node))
    except ZeroDivisionError as exc:
        raise ToolError("division by zero") from exc
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ToolError(f"cannot evaluate: {exc}") from exc


def _eval_node(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        return _constant(node.value)
    if isinstance(node, ast.Name):
        return _name(node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPERATORS:
        return BINARY_OPERATORS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPERATORS:
        return UNARY_OPERATORS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call):
        return _call(node)
    raise ToolError(f"unsupported syntax: {type(node).__name__}")


def _constant(value: object) -> Number:
    # bool is an int subclass, and complex/str/bytes are constants too; only real numbers are arithmetic.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(f"unsupported constant: {value!r}")
    return value


def _name(name: str) -> Number:
    if name not in CONSTANTS:
        raise ToolError(f"unknown name {name!r} (known: {', '.join(CONSTANTS)})")
    return CONSTANTS[name]


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        raise ToolError(f"unknown function (known: {', '.join(FUNCTIONS)})")
    function, fewest, most = FUNCTIONS[node.func.id]
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise ToolError(f"{node.func.id}() takes plain positional arguments only")
    if not fewest <= len(node.args) <= most:
        raise ToolError(f"{node.func.id}() takes {fewest} to {most} arguments, got {len(node.args)}")
    arguments = [_eval(arg) for arg in node.args]
    if node.func.id in ("min", "max") and len(arguments) == 1:
        return arguments[0]
    result: Number = function(*arguments)
    return result


def _checked(value: Number) -> Number:
    if isinstance(value, int) and abs(value).bit_length() > MAX_RESULT_BITS:
        raise ToolError("result is too large (limit 10**1000)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number")
    return value


async def _handle(arguments: dict[str, Any], ctx: ToolContext) -> str:
    return format_number(evaluate(str(arguments["expression"])))


def calculator_tool(timeout_s: float) -> Tool:
    """The `calculator` tool."""
    return Tool(
        name="calculator",
        description="Evaluate an arithmetic expression exactly, like 17 * 23 or sqrt(2) / 3.",
        parameters={
            "type": "object",
            "properties": {
                "expression": {"type": "string", "maxLength": 100, "description": "Arithmetic to evaluate."}
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
        example=ToolExample(
            question="What is 17 * 23?",
            arguments={"expression": "17 * 23"},
            result="391",
            answer="391 (17 * 23 = 391).",
        ),
        handler=_handle,
        timeout_s=timeout_s,
    )

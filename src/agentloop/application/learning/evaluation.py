"""Evaluation: the bundled suites, scoring of calls and answers, and a runner that puts each item through the
real agent turn (so the prompt is the serving prompt) against an in-memory store.

A suite is a JSONL file in `agentloop/evals/suites/`; each line is one item:
`{"id", "prompt", "tools", "expected_call", "expected_answer", "split"}`. `expected_call` is a call
`{"name", "arguments"?, "result"?}`, a list of calls that must appear in that order, or null: the turn must
not call any tool. `arguments` are compared by value (only the keys given); `result` is the number the call's
tool output must equal, which checks a calculator call by what it computed rather than how it was written.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from agentloop.application.agent import AgentService, ToolCalled, ToolReturned, TurnFinished
from agentloop.application.learning.dataset import fits_schema
from agentloop.domain.events import Event
from agentloop.domain.model import (
    DEFAULT_SYSTEM_PROMPT,
    Agent,
    Conversation,
    Message,
    ModelConfig,
    ToolCall,
    ToolResult,
)
from agentloop.errors import AgentLoopError, NotFoundError, ValidationError

SUITES_PACKAGE = "agentloop.evals"
SUITES_FOLDER = "suites"
# JSONL files in the suites folder that other parts of the loop own and that are not evaluation suites.
NOT_SUITES = frozenset({"curriculum"})
SPLITS = ("train", "heldout")
ANSWER_KINDS = ("exact", "numeric", "contains")
# The built-in tools in the order the default agent offers them (bootstrap.TOOL_ORDER; a test checks it).
BUILTIN_TOOLS = ("current_time", "list_files", "read_file", "write_file", "fetch_url", "python", "calculator")
ITEM_KEYS = frozenset({"id", "prompt", "tools", "expected_call", "expected_answer", "split"})
CALL_KEYS = frozenset({"name", "arguments", "result"})
REL_TOLERANCE = 1e-6

Step = tuple[ToolCall, ToolResult]
ArgumentNormaliser = Callable[[str, dict[str, Any]], dict[str, Any]]


def keep_arguments(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return arguments


# ----------------------------------------------------------------------------------------------------------
# suites
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedCall:
    name: str
    arguments: dict[str, Any] | None = None
    result: float | None = None


@dataclass(frozen=True)
class ExpectedAnswer:
    kind: str
    value: str | float


@dataclass(frozen=True)
class EvalItem:
    id: str
    suite: str
    prompt: str
    tools: tuple[str, ...]
    expected_calls: tuple[ExpectedCall, ...]
    expected_answer: ExpectedAnswer | None
    split: str


def _suites_folder() -> Traversable:
    return resources.files(SUITES_PACKAGE).joinpath(SUITES_FOLDER)


def suite_names() -> list[str]:
    """The bundled evaluation suites."""
    names = (
        entry.name.removesuffix(".jsonl")
        for entry in _suites_folder().iterdir()
        if entry.name.endswith(".jsonl")
    )
    return sorted(name for name in names if name not in NOT_SUITES)


def load_suites(
    names: Sequence[str] | None = None,
    split: str | None = "heldout",
    known_tools: Sequence[str] = BUILTIN_TOOLS,
) -> list[EvalItem]:
    """Load and validate bundled suites (all when `names` is None), keeping one split (both when None)."""
    if split is not None and split not in SPLITS:
        raise ValidationError(f"split must be one of {', '.join(SPLITS)} or None", field="split")
    available = suite_names()
    chosen = available if names is None else list(names)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValidationError(f"unknown suites: {', '.join(unknown)}", field="suites")
    items: list[EvalItem] = []
    for name in chosen:
        text = _suites_folder().joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
        items += parse_suite(name, text, known_tools)
    return [item for item in items if split is None or item.split == split]


def parse_suite(name: str, text: str, known_tools: Sequence[str] = BUILTIN_TOOLS) -> list[EvalItem]:
    """Parse one suite's JSONL; a bad line raises ValidationError naming the file and the line."""
    items: list[EvalItem] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}.jsonl:{number}"
        try:
            item = _parse_item(json.loads(line), name, known_tools)
        except (json.JSONDecodeError, _BadItem) as exc:
            raise ValidationError(f"{where}: {exc}", field="suites") from exc
        if item.id in seen:
            raise ValidationError(f"{where}: duplicate id {item.id!r}", field="suites")
        seen.add(item.id)
        items.append(item)
    return items


class _BadItem(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _BadItem(message)


def _parse_item(data: object, suite: str, known_tools: Sequence[str]) -> EvalItem:
    if not isinstance(data, dict):
        raise _BadItem("an item must be a JSON object")
    _require(set(data) == ITEM_KEYS, f"an item has exactly the keys {sorted(ITEM_KEYS)}, got {sorted(data)}")
    _require(_text(data["id"]) and _text(data["prompt"]), "'id' and 'prompt' must be non-empty strings")
    tools = data["tools"]
    _require(isinstance(tools, list) and all(isinstance(t, str) for t in tools), "'tools' must be names")
    unknown = sorted(set(tools) - set(known_tools))
    _require(not unknown, f"unknown tools: {', '.join(unknown)}")
    _require(len(set(tools)) == len(tools), "'tools' has duplicates")
    _require(data["split"] in SPLITS, f"'split' must be one of {', '.join(SPLITS)}")
    ordered = tuple(sorted(tools, key=lambda t: (known_tools.index(t), t)))
    return EvalItem(
        id=data["id"],
        suite=suite,
        prompt=data["prompt"],
        tools=ordered,
        expected_calls=_parse_calls(data["expected_call"], ordered),
        expected_answer=_parse_answer(data["expected_answer"]),
        split=data["split"],
    )


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_calls(data: object, tools: Sequence[str]) -> tuple[ExpectedCall, ...]:
    if data is None:
        return ()
    calls = data if isinstance(data, list) else [data]
    _require(bool(calls), "'expected_call' must be a call, a non-empty list of calls, or null")
    return tuple(_parse_call(call, tools) for call in calls)


def _parse_call(data: object, tools: Sequence[str]) -> ExpectedCall:
    if not isinstance(data, dict):
        raise _BadItem("an expected call must be an object")
    _require(
        set(data) <= CALL_KEYS and "name" in data, "an expected call has 'name', 'arguments'?, 'result'?"
    )
    _require(data["name"] in tools, f"expected call {data['name']!r} is not one of the item's tools")
    arguments = data.get("arguments")
    _require(arguments is None or isinstance(arguments, dict), "'arguments' must be an object")
    result = data.get("result")
    _require(result is None or _number(result), "'result' must be a number")
    return ExpectedCall(data["name"], arguments, None if result is None else float(result))


def _parse_answer(data: object) -> ExpectedAnswer | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"type", "value"}:
        raise _BadItem("'expected_answer' must be null or an object with 'type' and 'value'")
    kind, value = data["type"], data["value"]
    _require(kind in ANSWER_KINDS, f"answer type must be one of {', '.join(ANSWER_KINDS)}")
    if kind == "numeric":
        _require(_number(value), "a numeric answer's value must be a number")
        return ExpectedAnswer(kind, float(value))
    _require(_text(value), f"a {kind} answer's value must be a non-empty string")
    return ExpectedAnswer(kind, value)


# ----------------------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WHOLE_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def numbers_in(text: str) -> list[float]:
    """Every number written in `text`; "7,006,652" and "7006652.0" both read as 7006652."""
    return [float(match.replace(",", "")) for match in _NUMBER.findall(text)]


def as_number(value: object) -> float | None:
    """A number, or a string that is exactly one number; None otherwise (booleans are not numbers)."""
    if _number(value):
        assert isinstance(value, int | float)
        return float(value)
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
        return float(value.strip().replace(",", ""))
    return None


def close(a: float, b: float) -> bool:
    """Whole numbers must be equal (7006651 is not 7006652); others agree within a relative 1e-6."""
    a, b = float(a), float(b)
    if a.is_integer() and b.is_integer():
        return a == b
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=1e-9)


def same_value(expected: object, actual: object) -> bool:
    """Compare by value: numbers numerically (450 == "450" == 450.0), strings trimmed and case-insensitively,
    objects on the expected keys only, lists item by item."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and same_value(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(expected) == len(actual)
            and all(same_value(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if expected is None:
        return actual is None
    left, right = as_number(expected), as_number(actual)
    if left is not None and right is not None:
        return close(left, right)
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.strip().casefold() == actual.strip().casefold()
    return False


def call_matches(
    expected: ExpectedCall, step: Step, normalise_arguments: ArgumentNormaliser = keep_arguments
) -> bool:
    """The call names the expected tool, succeeded, and its arguments and result are as expected."""
    call, result = step
    if call.name != expected.name or not result.ok:
        return False
    if expected.arguments is not None:
        wanted = normalise_arguments(call.name, dict(expected.arguments))
        if not same_value(wanted, normalise_arguments(call.name, dict(call.arguments))):
            return False
    if expected.result is not None:
        output = as_number(result.output)
        return output is not None and close(output, expected.result)
    return True


def score_call(
    expected: ExpectedCall | Sequence[ExpectedCall] | None,
    steps: Sequence[Step],
    normalise_arguments: ArgumentNormaliser = keep_arguments,
) -> bool:
    """Each expected call matches a distinct call, in order; no expected call means no call was made."""
    wanted = () if expected is None else (expected,) if isinstance(expected, ExpectedCall) else expected
    if not wanted:
        return not steps
    remaining = iter(steps)
    # `any` consumes the shared iterator up to its match, so the next expected call searches after it.
    return all(any(call_matches(e, step, normalise_arguments) for step in remaining) for e in wanted)


def _normalised_text(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(".!")


def score_answer(expected: ExpectedAnswer | None, answer: str | None) -> bool:
    """exact: equal up to whitespace, case and a final full stop; numeric: some number in the answer equals
    the value (relative tolerance 1e-6); contains: case-insensitive substring. No expectation passes."""
    if expected is None:
        return True
    if answer is None:
        return False
    if expected.kind == "numeric":
        assert isinstance(expected.value, float)
        return any(close(number, expected.value) for number in numbers_in(answer))
    if expected.kind == "contains":
        return str(expected.value).casefold() in answer.casefold()
    return _normalised_text(answer) == _normalised_text(str(expected.value))


def score_item(
    item: EvalItem,
    steps: Sequence[Step],
    answer: str | None,
    normalise_arguments: ArgumentNormaliser = keep_arguments,
) -> bool:
    return score_call(item.expected_calls, steps, normalise_arguments) and score_answer(
        item.expected_answer, answer
    )


# ----------------------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemResult:
    id: str
    suite: str
    correct: bool
    calls: list[dict[str, Any]]
    answer: str | None
    latency_ms: float
    error: str | None = None

    @property
    def valid_calls(self) -> int:
        return sum(1 for call in self.calls if call["valid"])


@dataclass(frozen=True)
class SuiteScore:
    n: int
    accuracy: float
    valid_call_rate: float | None
    p50_latency_ms: float
    p95_latency_ms: float


@dataclass(frozen=True)
class EvalReport:
    version: str
    seed: int
    accuracy: float
    suites: dict[str, SuiteScore]
    items: list[ItemResult] = field(default_factory=list)

    @property
    def item_ids(self) -> frozenset[str]:
        return frozenset(item.id for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        return cls(
            version=data["version"],
            seed=data["seed"],
            accuracy=data["accuracy"],
            suites={name: SuiteScore(**score) for name, score in data["suites"].items()},
            items=[ItemResult(**item) for item in data["items"]],
        )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarise(results: Sequence[ItemResult], version: str, seed: int) -> EvalReport:
    suites: dict[str, SuiteScore] = {}
    for name in sorted({r.suite for r in results}):
        mine = [r for r in results if r.suite == name]
        calls = sum(len(r.calls) for r in mine)
        latencies = [r.latency_ms for r in mine]
        suites[name] = SuiteScore(
            n=len(mine),
            accuracy=sum(r.correct for r in mine) / len(mine),
            valid_call_rate=sum(r.valid_calls for r in mine) / calls if calls else None,
            p50_latency_ms=percentile(latencies, 0.5),
            p95_latency_ms=percentile(latencies, 0.95),
        )
    accuracy = sum(r.correct for r in results) / len(results) if results else 0.0
    return EvalReport(version, seed, accuracy, suites, list(results))


# ----------------------------------------------------------------------------------------------------------
# runner
# ----------------------------------------------------------------------------------------------------------


class MemoryStore:
    """An in-memory ConversationStore: evaluation turns never reach the real database."""

    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}
        self.conversations: dict[str, Conversation] = {}

    def add_agent(self, agent: Agent) -> None:
        self.agents[agent.id] = agent

    async def get_agent(self, agent_id: str) -> Agent:
        if agent_id not in self.agents:
            raise NotFoundError("agent", agent_id)
        return self.agents[agent_id]

    async def get_conversation(self, conversation_id: str) -> Conversation:
        if conversation_id not in self.conversations:
            raise NotFoundError("conversation", conversation_id)
        stored = self.conversations[conversation_id]
        return replace(stored, messages=list(stored.messages))

    async def create_conversation(self, conversation: Conversation) -> None:
        self.conversations[conversation.id] = replace(conversation, messages=list(conversation.messages))

    async def append(
        self, conversation_id: str, messages: Sequence[Message], events: Sequence[Event] = ()
    ) -> None:
        if conversation_id not in self.conversations:
            raise NotFoundError("conversation", conversation_id)
        self.conversations[conversation_id].messages.extend(messages)


ServiceFactory = Callable[[MemoryStore], AgentService]


@dataclass(frozen=True)
class EvalSettings:
    """How every item's agent is configured: greedy decoding, so runs are repeatable."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = 256
    max_steps: int = 5
    seed: int = 0
    normalise_arguments: ArgumentNormaliser = keep_arguments


async def run_eval(
    make_service: ServiceFactory, items: Sequence[EvalItem], settings: EvalSettings | None = None
) -> EvalReport:
    """Run each item as a fresh conversation through the agent turn and score it."""
    settings = settings or EvalSettings()
    store = MemoryStore()
    service = make_service(store)
    results = [await run_item(service, store, item, settings) for item in items]
    return summarise(results, service.engine.model_version, settings.seed)


async def run_item(
    service: AgentService, store: MemoryStore, item: EvalItem, settings: EvalSettings
) -> ItemResult:
    agent = Agent(
        f"eval {item.id}",
        ModelConfig(temperature=0.0, max_tokens=settings.max_tokens),
        allowed_tools=item.tools,
        system_prompt=settings.system_prompt,
        max_steps=settings.max_steps,
    )
    store.add_agent(agent)
    conversation = Conversation(agent.id, title=item.id, source="eval")
    await store.create_conversation(conversation)
    calls: dict[str, ToolCall] = {}
    steps: list[Step] = []
    answer: str | None = None
    error: str | None = None
    started = time.perf_counter()
    try:
        async for event in service.run_turn(conversation.id, item.prompt):
            if isinstance(event, ToolCalled):
                calls[event.call.id] = event.call
            elif isinstance(event, ToolReturned):
                steps.append((calls[event.result.call_id], event.result))
            elif isinstance(event, TurnFinished):
                answer = event.message.content
    except AgentLoopError as exc:  # one failing item (context overflow, engine error) must not end the run
        error = f"{type(exc).__name__}: {exc}"
    latency_ms = (time.perf_counter() - started) * 1000.0
    offered = service.tools.select(t for t in item.tools if t in service.tools.names())
    correct = error is None and score_item(item, steps, answer, settings.normalise_arguments)
    records = [_call_record(call, result, fits_schema(call, offered)) for call, result in steps]
    return ItemResult(item.id, item.suite, correct, records, answer, latency_ms, error)


def _call_record(call: ToolCall, result: ToolResult, valid: bool) -> dict[str, Any]:
    return {
        "name": call.name,
        "arguments": call.arguments,
        "ok": result.ok,
        "output": result.output,
        "error": result.error,
        "valid": valid,
    }


__all__ = [
    "BUILTIN_TOOLS",
    "EvalItem",
    "EvalReport",
    "EvalSettings",
    "ExpectedAnswer",
    "ExpectedCall",
    "ItemResult",
    "MemoryStore",
    "SuiteScore",
    "as_number",
    "load_suites",
    "numbers_in",
    "parse_suite",
    "run_eval",
    "run_item",
    "same_value",
    "score_answer",
    "score_call",
    "score_item",
    "suite_names",
]

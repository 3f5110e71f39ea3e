from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentloop.domain.events import ResponseGenerated, ToolExecuted
from agentloop.domain.model import Agent, ModelConfig, Usage
from agentloop.errors import ContextOverflowError, NotFoundError, ValidationError


@given(st.floats(min_value=0, max_value=2), st.integers(min_value=1, max_value=10_000))
def test_model_config_accepts_valid_ranges(temperature: float, max_tokens: int) -> None:
    assert ModelConfig(temperature, max_tokens).max_tokens == max_tokens


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0}, "top_p"),
    ],
)
def test_model_config_rejects_out_of_range(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ModelConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_agent_tools_and_validation() -> None:
    agent = Agent("a", allowed_tools=("calculator",))
    assert agent.can_use_tool("calculator") and not agent.can_use_tool("python")
    with pytest.raises(ValidationError):
        Agent("  ")
    with pytest.raises(ValidationError):
        Agent("a", max_steps=0)


def test_usage_adds() -> None:
    assert Usage(1, 2) + Usage(3, 4) == Usage(4, 6)


def test_events_have_names_and_payloads() -> None:
    event = ToolExecuted(conversation_id="c", tool_name="calculator", ok=True, duration_ms=1.0)
    assert event.name == "ToolExecuted"
    assert event.payload() == {
        "conversation_id": "c",
        "tool_name": "calculator",
        "ok": True,
        "duration_ms": 1.0,
        "error": None,
    }
    generated = ResponseGenerated(
        conversation_id="c",
        message_id="m",
        model_version="v",
        prompt_tokens=1,
        completion_tokens=2,
        latency_ms=3.0,
        steps=0,
    )
    assert generated.payload()["model_version"] == "v"


def test_every_event_payload_is_its_fields_but_id_and_time() -> None:
    """payload() copies shallowly, so every field must be a plain value (a nested one would be shared)."""
    import dataclasses
    import typing

    from agentloop.domain import events

    plain = {"str", "int", "float", "bool", "str | None", "float | None", "int | None", "bool | None"}
    kinds = [k for k in vars(events).values() if isinstance(k, type) and issubclass(k, events.Event)]
    assert len(kinds) > 5
    for kind in kinds:
        hints = typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            shown = str(hints[f.name]).replace("<class '", "").replace("'>", "").replace("typing.", "")
            assert f.name in ("id", "occurred_at") or shown.replace("Optional[", "").rstrip("]") in plain, (
                f"{kind.__name__}.{f.name}: {shown}"
            )
    event = ToolExecuted(conversation_id="c", tool_name="t", ok=False, duration_ms=2.0, error="boom")
    expected = dataclasses.asdict(event)
    del expected["id"], expected["occurred_at"]
    assert event.payload() == expected


def test_errors_carry_context() -> None:
    assert "conversation x not found" in str(NotFoundError("conversation", "x"))
    overflow = ContextOverflowError(5000, 4096)
    assert overflow.prompt_tokens == 5000 and "4096" in str(overflow)

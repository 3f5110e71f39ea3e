"""A caller's tool schema that llama.cpp's grammar converter cannot handle is the caller's error (4xx), not an
engine failure (503): found by fuzzing the OpenAI endpoint with odd `parameters`."""

from __future__ import annotations

from typing import Any

import pytest

from agentloop.adapters.inference.llama import LlamaEngine
from agentloop.application.ports import GenerationRequest, OutputConstraint, complete
from agentloop.errors import ValidationError

pytestmark = pytest.mark.model


@pytest.mark.parametrize(
    "schema",
    [
        {"not": {}},
        {"$ref": "#/nope"},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "a+"}}},
    ],
)
async def test_unusable_tool_schema_is_a_validation_error(llama_engine: LlamaEngine, schema: Any) -> None:
    constraint = OutputConstraint(schema, "<tool_call>", "</tool_call>")
    request = GenerationRequest("Call a tool:", max_tokens=4, constraint=constraint)
    with pytest.raises(ValidationError, match="cannot be turned into a grammar") as caught:
        await complete(llama_engine, request)
    assert caught.value.field == "tools"
    # The engine keeps serving.
    assert (await complete(llama_engine, GenerationRequest("1, 2, 3,", max_tokens=2))).text

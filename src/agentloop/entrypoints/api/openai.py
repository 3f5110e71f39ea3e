"""OpenAI-compatible /v1/chat/completions and /v1/models: one model call in our prompt format per request.

The client runs the tools: a reply that calls one comes back as `tool_calls`, and the client sends the
result in a `tool` message that refers to the call's id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import jsonschema
from fastapi import APIRouter, Request, Response

from agentloop.application.agent import ModelStep, StepOutcome
from agentloop.application.ports import Completion, GenerationRequest, InferenceEngine
from agentloop.application.prompt import ParsedCall, ToolChoice
from agentloop.application.tools import ToolSchema
from agentloop.domain.model import (
    DEFAULT_SYSTEM_PROMPT,
    Message,
    ModelConfig,
    Role,
    ToolCall,
    ToolResult,
    new_id,
)
from agentloop.entrypoints.api.deps import ContainerDep, EngineDep
from agentloop.entrypoints.api.errors import openai_error, problem_from
from agentloop.entrypoints.api.schemas import ChatCompletionRequest, ChatMessage, ChatTool
from agentloop.entrypoints.api.streams import ClosingStreamingResponse, closing, sse, unless_disconnected
from agentloop.errors import ValidationError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])

OWNER = "agentloop"
FINISH_REASONS = {"length": "length"}  # everything else the engine reports ended the reply normally


@dataclass
class ChatStep(ModelStep):
    """A ModelStep that also ends at the caller's own stop sequences."""

    extra_stop: tuple[str, ...] = ()

    async def request(self) -> GenerationRequest:
        base = await super().request()
        return replace(base, stop=base.stop + self.extra_stop)


# --- request -> domain ------------------------------------------------------------------------------------


def _arguments(raw: str) -> dict[str, Any]:
    try:
        arguments = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ValidationError(f"tool call arguments are not valid JSON: {exc.msg}", field="messages") from exc
    if not isinstance(arguments, dict):
        raise ValidationError("tool call arguments must be a JSON object", field="messages")
    return arguments


def to_messages(messages: list[ChatMessage]) -> list[Message]:
    """Chat messages as domain messages; a tool message gets its tool's name from the call it answers."""
    calls: dict[str, ToolCall] = {}
    out: list[Message] = []
    for m in messages:
        if m.role in ("system", "developer"):
            continue
        if m.role == "assistant" and m.tool_calls:
            for tc in m.tool_calls:
                calls[tc.id] = ToolCall(tc.function.name, _arguments(tc.function.arguments), id=tc.id)
                out.append(Message("", Role.ASSISTANT, m.text, tool_call=calls[tc.id]))
        elif m.role == "tool":
            call = calls.get(m.tool_call_id or "")
            if call is None:
                raise ValidationError(
                    f"tool message answers unknown tool_call_id {m.tool_call_id!r}", field="messages"
                )
            result = ToolResult(call.id, call.name, m.text)
            out.append(Message("", Role.TOOL, m.text, tool_call=call, tool_result=result))
        else:
            out.append(Message("", Role(m.role), m.text))
    return out


def to_tools(tools: list[ChatTool] | None) -> list[ToolSchema]:
    schemas = []
    for tool in tools or []:
        fn = tool.function
        try:
            jsonschema.Draft202012Validator.check_schema(fn.parameters)
        except jsonschema.SchemaError as exc:
            raise ValidationError(
                f"tool {fn.name!r} parameters are not a valid JSON Schema: {exc.message}", "tools"
            ) from exc
        schemas.append(ToolSchema(fn.name, fn.description, fn.parameters))
    return schemas


def check_limits(body: ChatCompletionRequest, max_tools: int, max_chars: int) -> None:
    """Refuse requests over the configured sizes before any work is done on them."""
    if body.tools and len(body.tools) > max_tools:
        raise ValidationError(f"{len(body.tools)} tools declared; the limit is {max_tools}", field="tools")
    for index, message in enumerate(body.messages):
        if len(message.text) > max_chars:
            raise ValidationError(
                f"message {index} is {len(message.text)} characters; the limit is {max_chars}",
                field=f"messages.{index}.content",
            )


def to_choice(body: ChatCompletionRequest, tools: list[ToolSchema]) -> ToolChoice:
    choice = body.tool_choice or "auto"
    if choice in ("auto", "none"):
        return choice
    if not tools:
        raise ValidationError("tool_choice needs tools", field="tool_choice")
    if choice == "required":
        return "required"
    assert not isinstance(choice, str)
    if choice.function.name not in {t.name for t in tools}:
        raise ValidationError(
            f"tool_choice names unknown function {choice.function.name!r}", field="tool_choice"
        )
    return choice.function.name


def system_text(body: ChatCompletionRequest, tools: list[ToolSchema]) -> str:
    first = next((m for m in body.messages if m.role in ("system", "developer")), None)
    if first is not None:
        return first.text
    return DEFAULT_SYSTEM_PROMPT if tools else ""


def build_step(body: ChatCompletionRequest, engine: InferenceEngine, default_max_tokens: int) -> ChatStep:
    tools = to_tools(body.tools)
    config = ModelConfig(
        temperature=0.0 if body.temperature is None else body.temperature,
        max_tokens=body.max_completion_tokens or body.max_tokens or default_max_tokens,
        top_p=1.0 if body.top_p is None else body.top_p,
    )
    return ChatStep(
        engine,
        system_text(body, tools),
        tools,
        to_messages(body.messages),
        config,
        to_choice(body, tools),
        body.seed,
        extra_stop=body.stop_sequences,
    )


# --- domain -> response -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the step produced, in OpenAI's terms."""

    content: str | None
    tool_call: ToolCall | None
    finish_reason: str
    completion: Completion

    @classmethod
    def of(cls, outcome: StepOutcome) -> Reply:
        completion, reply = outcome.completion, outcome.reply
        if isinstance(reply, ParsedCall):
            if reply.call is not None:
                return cls(None, reply.call, "tool_calls", completion)
            reply = completion.text.strip()  # a malformed call: hand back the raw text
        return cls(reply, None, FINISH_REASONS.get(completion.finish_reason, "stop"), completion)


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def usage_json(completion: Completion) -> dict[str, int]:
    usage = completion.usage
    total = usage.prompt_tokens + usage.completion_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": total,
    }


@dataclass(frozen=True)
class Envelope:
    """The fields every completion object and chunk of one response share."""

    id: str
    model: str
    created: int

    @classmethod
    def new(cls, model: str) -> Envelope:
        return cls(f"chatcmpl-{new_id()[:24]}", model, int(time.time()))

    def wrap(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse(self.wrap("chat.completion.chunk", [choice]))


def completion_json(envelope: Envelope, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_call is not None:
        message["tool_calls"] = [tool_call_json(reply.tool_call)]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
    return envelope.wrap(
        "chat.completion",
        [choice],
        usage=usage_json(reply.completion),
        system_fingerprint=reply.completion.model_version,
    )


async def run_step(step: ModelStep) -> Reply:
    async for _ in step.run():
        pass
    assert step.outcome is not None
    return Reply.of(step.outcome)


async def stream_step(step: ModelStep, envelope: Envelope, include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks: the role, content deltas as they arrive (or one tool_calls delta), the finish, [DONE]."""
    yield envelope.chunk({"role": "assistant", "content": ""})
    try:
        async with closing(step.run()) as texts:
            async for text in texts:
                yield envelope.chunk({"content": text})
    except Exception as exc:
        # Headers are already sent: report the error in-stream, as OpenAI does.
        problem = problem_from(exc)
        if problem.status >= 500:
            logger.error("chat completion stream failed", exc_info=exc)
        yield sse(openai_error(problem))
        yield sse("[DONE]")
        return
    assert step.outcome is not None
    reply = Reply.of(step.outcome)
    if reply.tool_call is not None:
        yield envelope.chunk({"tool_calls": [{"index": 0, **tool_call_json(reply.tool_call)}]})
    yield envelope.chunk({}, reply.finish_reason)
    if include_usage:
        yield sse(envelope.wrap("chat.completion.chunk", [], usage=usage_json(reply.completion)))
    yield sse("[DONE]")


# --- routes -----------------------------------------------------------------------------------------------


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, container: ContainerDep, request: Request
) -> Response | dict[str, Any]:
    """One model call in OpenAI's chat format; with `stream` the reply arrives as server-sent events."""
    check_limits(body, container.settings.max_tools_per_request, container.settings.max_message_chars)
    step = build_step(body, container.engine, container.settings.max_tokens)
    envelope = Envelope.new(body.model or container.engine.model_version)
    if not body.stream:
        return completion_json(envelope, await unless_disconnected(request, run_step(step)))
    await step.request()  # refuse an oversized prompt with a proper status before the stream starts
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return ClosingStreamingResponse(
        stream_step(step, envelope, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/models")
async def list_models(engine: EngineDep) -> dict[str, Any]:
    """The one model this server runs."""
    model = {"id": engine.model_version, "object": "model", "created": 0, "owned_by": OWNER}
    return {"object": "list", "data": [model]}

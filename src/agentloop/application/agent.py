"""The agent turn: decide (call a tool or answer), run tools, repeat up to the step limit, store each step."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

from agentloop.application.ports import (
    ChatPrompt,
    Completion,
    ConversationStore,
    GenerationRequest,
    InferenceEngine,
    Token,
)
from agentloop.application.prompt import (
    STOP_SEQUENCES,
    ParsedCall,
    ToolChoice,
    could_become_call,
    decision_constraint,
    parse_reply,
    render_prompt,
)
from agentloop.application.tools import ToolContext, ToolRegistry, ToolSchema
from agentloop.domain.events import ConversationSaved, Event, ResponseGenerated, ToolExecuted
from agentloop.domain.model import (
    Agent,
    Conversation,
    Message,
    ModelConfig,
    Role,
    ToolCall,
    ToolResult,
    Usage,
)
from agentloop.errors import ContextOverflowError, ValidationError


@dataclass(frozen=True)
class TokenStreamed:
    text: str


@dataclass(frozen=True)
class ToolCalled:
    call: ToolCall
    message_id: str


@dataclass(frozen=True)
class ToolReturned:
    result: ToolResult
    message_id: str


@dataclass(frozen=True)
class TurnFinished:
    message: Message
    steps: list[tuple[ToolCall, ToolResult]]
    usage: Usage
    latency_ms: float


TurnEvent = TokenStreamed | ToolCalled | ToolReturned | TurnFinished


@dataclass(frozen=True)
class StepOutcome:
    completion: Completion
    reply: ParsedCall | str


@dataclass
class ModelStep:
    """One model call in the agreed prompt format; streams answer tokens, holds back tool-call text."""

    engine: InferenceEngine
    system: str
    tools: Sequence[ToolSchema]
    messages: Sequence[Message]
    config: ModelConfig
    choice: ToolChoice = "auto"
    seed: int | None = None
    single_line: bool = False
    outcome: StepOutcome | None = field(default=None, init=False)

    async def request(self) -> GenerationRequest:
        prompt = render_prompt(self.system, self.tools, self.messages)
        needed = await self.engine.count_tokens(prompt)
        limit = self.engine.context_size - self.config.max_tokens
        if needed > limit:
            raise ContextOverflowError(needed, limit)
        return GenerationRequest(
            prompt=prompt,
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            stop=(*STOP_SEQUENCES, "\n") if self.single_line else STOP_SEQUENCES,
            seed=self.seed,
            constraint=decision_constraint(self.tools, self.choice),
            chat=ChatPrompt(
                self.system,
                tuple(
                    {"name": t.name, "description": t.description, "parameters": t.parameters}
                    for t in self.tools
                ),
                tuple(self.messages),
            ),
        )

    async def run(self) -> AsyncGenerator[str, None]:
        """Yield answer text as it streams; afterwards `outcome` holds the completion and parsed reply."""
        request = await self.request()
        shown, buffered = 0, ""
        async with aclosing(self.engine.stream(request)) as items:
            async for item in items:
                if isinstance(item, Completion):
                    reply: ParsedCall | str = (
                        parse_reply(item.text) if calls_allowed_for(request) else item.text.strip()
                    )
                    self.outcome = StepOutcome(item, reply)
                    if isinstance(reply, str) and shown < len(buffered):
                        yield buffered[shown:]
                    return
                buffered += item.text
                if calls_allowed_for(request) and could_become_call(buffered):
                    continue
                if shown < len(buffered):
                    yield buffered[shown:]
                    shown = len(buffered)


def calls_allowed_for(request: GenerationRequest) -> bool:
    return request.constraint is not None and request.constraint.allow_call


class AgentService:
    def __init__(
        self,
        engine: InferenceEngine,
        store: ConversationStore,
        tools: ToolRegistry,
        workspace_root: Path,
        max_message_chars: int = 16000,
        single_line_answers: bool = False,
        seed: int | None = None,
    ) -> None:
        self.engine = engine
        self.seed = seed
        self.single_line_answers = single_line_answers
        self.store = store
        self.tools = tools
        self.workspace_root = workspace_root
        self.max_message_chars = max_message_chars

    async def ask(self, conversation_id: str, text: str) -> TurnFinished:
        """Run one turn to the end and return its outcome."""
        async for event in self.run_turn(conversation_id, text):
            if isinstance(event, TurnFinished):
                return event
        raise RuntimeError("turn ended without an answer")

    async def run_turn(self, conversation_id: str, text: str) -> AsyncGenerator[TurnEvent, None]:
        """Run one agent turn, yielding tokens and tool steps; every step is committed as it happens."""
        self.check_message(text)
        conversation = await self.store.get_conversation(conversation_id)
        agent = await self.store.get_agent(conversation.agent_id)
        user = Message(conversation.id, Role.USER, text)
        await self.store.append(conversation.id, [user])
        turn = _Turn(self, agent, conversation, [*conversation.messages, user])
        async with aclosing(turn.run()) as events:
            async for event in events:
                yield event

    def check_message(self, text: str) -> None:
        """ValidationError unless `text` is a message a turn accepts (not blank, within the length limit);
        callers that store something before the turn (a new conversation) check first."""
        if not text.strip():
            raise ValidationError("message must not be empty", field="content")
        if len(text) > self.max_message_chars:
            raise ValidationError(
                f"message is {len(text)} characters; the limit is {self.max_message_chars}", field="content"
            )


class _Turn:
    def __init__(
        self, service: AgentService, agent: Agent, conversation: Conversation, history: list[Message]
    ):
        self.service = service
        self.agent = agent
        self.conversation = conversation
        self.history = history
        self.tools = service.tools.select(t for t in agent.allowed_tools if t in service.tools.names())
        self.usage = Usage()
        self.steps: list[tuple[ToolCall, ToolResult]] = []
        self.started = time.perf_counter()
        self._step: ModelStep | None = None

    async def run(self) -> AsyncGenerator[TurnEvent, None]:
        for step in range(self.agent.max_steps + 1):
            # The last step, and any step after the model repeated a call, must answer: no endless tool loops.
            choice: ToolChoice = "auto" if step < self.agent.max_steps and not self._repeating() else "none"
            async for text in self._model(choice):
                yield TokenStreamed(text)
            completion, reply = self._outcome()
            if isinstance(reply, ParsedCall) and reply.call and self._parrots(reply.call):
                # A copy of a prompt demonstration is not a decision about this question: answer instead.
                async for text in self._model("none"):
                    yield TokenStreamed(text)
                completion, reply = self._outcome()
            if isinstance(reply, str):
                yield await self._finish(reply, completion)
                return
            async for event in self._tool_step(reply, completion):
                yield event

    async def _model(self, choice: ToolChoice) -> AsyncGenerator[str, None]:
        self._step = ModelStep(
            self.service.engine,
            self.agent.system_prompt,
            self.tools,
            self.history,
            self.agent.model_config,
            choice,
            seed=self.service.seed,
            single_line=self.service.single_line_answers,
        )
        async with aclosing(self._step.run()) as texts:
            async for text in texts:
                yield text

    def _outcome(self) -> tuple[Completion, ParsedCall | str]:
        assert self._step is not None and self._step.outcome is not None
        self.usage += self._step.outcome.completion.usage
        return self._step.outcome.completion, self._step.outcome.reply

    def _parrots(self, call: ToolCall) -> bool:
        examples = [tool.example for tool in self.tools if tool.name == call.name and tool.example]
        return any(example.arguments == call.arguments for example in examples)

    def _repeating(self) -> bool:
        calls = [(call.name, json.dumps(call.arguments, sort_keys=True)) for call, _ in self.steps]
        return len(calls) != len(set(calls))

    async def _tool_step(self, parsed: ParsedCall, completion: Completion) -> AsyncIterator[TurnEvent]:
        call = parsed.call or ToolCall("invalid", {})
        asked = Message(
            self.conversation.id,
            Role.ASSISTANT,
            completion.text,
            tool_call=call,
            usage=completion.usage,
            latency_ms=completion.duration_ms,
            model_version=completion.model_version,
        )
        await self.service.store.append(self.conversation.id, [asked])
        yield ToolCalled(call, asked.id)
        result = await self._execute(parsed, call)
        answered = Message(self.conversation.id, Role.TOOL, result.output, tool_call=call, tool_result=result)
        event = ToolExecuted(
            conversation_id=self.conversation.id,
            tool_name=call.name,
            ok=result.ok,
            duration_ms=result.duration_ms,
            error=result.error,
        )
        await self.service.store.append(self.conversation.id, [answered], [event])
        self.history += [asked, answered]
        self.steps.append((call, result))
        yield ToolReturned(result, answered.id)

    async def _execute(self, parsed: ParsedCall, call: ToolCall) -> ToolResult:
        if parsed.error is not None:
            return ToolResult(call.id, call.name, f"error: {parsed.error}", ok=False, error=parsed.error)
        if not self.agent.can_use_tool(call.name):
            error = f"tool {call.name!r} is not available to this agent"
            return ToolResult(call.id, call.name, f"error: {error}", ok=False, error=error)
        workspace = self.service.workspace_root / self.conversation.id
        return await self.service.tools.execute(call, ToolContext(self.conversation.id, workspace))

    async def _finish(self, answer: str, completion: Completion) -> TurnFinished:
        latency_ms = (time.perf_counter() - self.started) * 1000.0
        message = Message(
            self.conversation.id,
            Role.ASSISTANT,
            answer,
            usage=self.usage,
            latency_ms=latency_ms,
            model_version=completion.model_version,
        )
        events: list[Event] = [
            ResponseGenerated(
                conversation_id=self.conversation.id,
                message_id=message.id,
                model_version=completion.model_version,
                prompt_tokens=self.usage.prompt_tokens,
                completion_tokens=self.usage.completion_tokens,
                latency_ms=latency_ms,
                steps=len(self.steps),
            ),
            ConversationSaved(conversation_id=self.conversation.id, message_count=len(self.history) + 1),
        ]
        await self.service.store.append(self.conversation.id, [message], events)
        return TurnFinished(message, self.steps, self.usage, latency_ms)


__all__ = [
    "AgentService",
    "ModelStep",
    "StepOutcome",
    "Token",
    "TokenStreamed",
    "ToolCalled",
    "ToolReturned",
    "TurnEvent",
    "TurnFinished",
]

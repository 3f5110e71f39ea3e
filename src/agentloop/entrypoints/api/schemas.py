"""Request and response bodies. Pydantic stops here: routes turn these into domain objects and back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentloop.application.agent import TurnFinished
from agentloop.application.groupthink import GroupThinkAnswer
from agentloop.application.tools import ToolSchema
from agentloop.domain.model import Agent, Conversation, Message, ToolCall, ToolResult

MAX_TOKENS_LIMIT = 4096

Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT, description="Longest reply of one model call.")]
MaxSteps = Annotated[int, Field(ge=1, le=20, description="Tool steps allowed per turn.")]


class Body(BaseModel):
    # Unknown fields are refused so that a typo ("temprature") is reported instead of silently ignored.
    model_config = ConfigDict(extra="forbid")


# --- agents -----------------------------------------------------------------------------------------------


class AgentCreate(Body):
    name: str = Field(min_length=1, max_length=100)
    system_prompt: str | None = Field(None, max_length=20000, description="Default: the built-in prompt.")
    allowed_tools: list[str] | None = Field(
        None, description="Registered tool names; default: the built-ins."
    )
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    max_tokens: MaxTokens | None = None
    max_steps: MaxSteps | None = None


class AgentOut(BaseModel):
    id: str
    name: str
    system_prompt: str
    allowed_tools: list[str]
    temperature: float
    top_p: float
    max_tokens: int
    max_steps: int
    adapter: str | None
    created_at: datetime

    @classmethod
    def of(cls, agent: Agent) -> AgentOut:
        config = agent.model_config
        return cls(
            id=agent.id,
            name=agent.name,
            system_prompt=agent.system_prompt,
            allowed_tools=list(agent.allowed_tools),
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            max_steps=agent.max_steps,
            adapter=config.adapter,
            created_at=agent.created_at,
        )


# --- conversations ----------------------------------------------------------------------------------------


class ConversationCreate(Body):
    agent_id: str | None = Field(None, description="Default: the built-in agent.")
    title: str = Field("", max_length=200)


class ConversationOut(BaseModel):
    id: str
    agent_id: str
    title: str
    source: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationOut:
        c = conversation
        return cls(
            id=c.id,
            agent_id=c.agent_id,
            title=c.title,
            source=c.source,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    total: int
    limit: int
    offset: int


class ToolCallOut(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]

    @classmethod
    def of(cls, call: ToolCall) -> ToolCallOut:
        return cls(id=call.id, name=call.name, arguments=call.arguments)


class ToolResultOut(BaseModel):
    name: str
    output: str
    ok: bool
    error: str | None

    @classmethod
    def of(cls, result: ToolResult) -> ToolResultOut:
        return cls(name=result.name, output=result.output, ok=result.ok, error=result.error)


class MessageOut(BaseModel):
    id: str
    role: str
    content: str
    tool_call: ToolCallOut | None
    tool_result: ToolResultOut | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float | None
    model_version: str | None
    created_at: datetime

    @classmethod
    def of(cls, m: Message) -> MessageOut:
        return cls(
            id=m.id,
            role=str(m.role),
            content=m.content,
            tool_call=ToolCallOut.of(m.tool_call) if m.tool_call else None,
            tool_result=ToolResultOut.of(m.tool_result) if m.tool_result else None,
            prompt_tokens=m.usage.prompt_tokens,
            completion_tokens=m.usage.completion_tokens,
            latency_ms=m.latency_ms,
            model_version=m.model_version,
            created_at=m.created_at,
        )


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationDetail:
        summary = ConversationOut.of(conversation).model_dump()
        return cls(**summary, messages=[MessageOut.of(m) for m in conversation.messages])


# --- turns ------------------------------------------------------------------------------------------------


class MessageCreate(Body):
    content: str = Field(min_length=1, description="The user's message.")
    mode: Literal["single", "groupthink"] = Field(
        "single", description="`groupthink`: several samples answer, run their tools and vote (ADR-0010)."
    )


class StepOut(BaseModel):
    name: str
    arguments: dict[str, Any]
    result: str
    ok: bool


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class TurnOut(BaseModel):
    conversation_id: str
    message_id: str
    answer: str
    steps: list[StepOut]
    usage: UsageOut
    latency_ms: float
    model_version: str | None
    groupthink: GroupThinkOut | None = None

    @classmethod
    def of(cls, turn: TurnFinished) -> TurnOut:
        message = turn.message
        return cls(
            conversation_id=message.conversation_id,
            message_id=message.id,
            answer=message.content,
            steps=[
                StepOut(name=c.name, arguments=c.arguments, result=r.output, ok=r.ok) for c, r in turn.steps
            ],
            usage=UsageOut(
                prompt_tokens=turn.usage.prompt_tokens, completion_tokens=turn.usage.completion_tokens
            ),
            latency_ms=turn.latency_ms,
            model_version=message.model_version,
        )


class VoteOut(BaseModel):
    samples: list[int]
    weight: float
    answer: str | None
    calls: list[dict[str, Any]]


class GroupThinkOut(BaseModel):
    agreement: float = Field(description="The winning answer's share of the (tool-success weighted) vote.")
    samples: int
    labeled: bool = Field(description="Stored as a training label (agreement >= threshold, tools clean).")
    votes: list[VoteOut]
    dissent: list[VoteOut]


def groupthink_turn(answer: GroupThinkAnswer) -> TurnOut:
    """A GroupThink answer in the shape of a turn, with the vote beside it."""
    consensus, message = answer.consensus, answer.message
    data = consensus.to_dict()
    return TurnOut(
        conversation_id=answer.conversation_id,
        message_id=message.id,
        answer=message.content,
        steps=[
            StepOut(name=c.name, arguments=c.arguments, result=r.output, ok=r.ok)
            for c, r in consensus.winner.steps
        ],
        # The winner's turn; the other samples cost as much again each.
        usage=UsageOut(
            prompt_tokens=message.usage.prompt_tokens, completion_tokens=message.usage.completion_tokens
        ),
        latency_ms=message.latency_ms or 0.0,
        model_version=message.model_version,
        groupthink=GroupThinkOut(
            agreement=data["agreement"],
            samples=len(consensus.samples),
            labeled=answer.labeled,
            votes=[VoteOut(**vote) for vote in data["votes"]],
            dissent=[VoteOut(**vote) for vote in data["dissent"]],
        ),
    )


class ToolOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]

    @classmethod
    def of(cls, tool: ToolSchema) -> ToolOut:
        return cls(name=tool.name, description=tool.description, parameters=tool.parameters)


# --- health -----------------------------------------------------------------------------------------------


class Live(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, dict[str, Any]]


# --- OpenAI-compatible chat completions --------------------------------------------------------------------
# Unknown fields are ignored here, as OpenAI clients send many optional ones this server does not use.


class ChatFunctionCall(BaseModel):
    name: str
    arguments: str = "{}"


class ChatToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ChatFunctionCall


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ChatTool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionName


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str = Field("", description="Echoed back; the server has one model.")
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="Up to 4 sequences that end the reply."
    )
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

"""The native API under /api/v1: agents, conversations, turns and tools."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from agentloop.adapters.storage.repository import SqlStore
from agentloop.bootstrap import default_tool_names
from agentloop.domain.auth import Principal
from agentloop.domain.model import DEFAULT_SYSTEM_PROMPT, Agent, Conversation, ModelConfig
from agentloop.entrypoints.api.deps import AgentsDep, ContainerDep, StoreDep, ToolsDep
from agentloop.entrypoints.api.schemas import (
    AgentCreate,
    AgentOut,
    ConversationCreate,
    ConversationDetail,
    ConversationOut,
    ConversationPage,
    MessageCreate,
    ToolOut,
    TurnOut,
    groupthink_turn,
)
from agentloop.entrypoints.api.security import AdminDep, PrincipalDep
from agentloop.entrypoints.api.streams import unless_disconnected
from agentloop.errors import NotFoundError, ValidationError

router = APIRouter(prefix="/api/v1", tags=["native"])


async def check_owner(store: SqlStore, conversation_id: str, principal: Principal) -> None:
    """404, exactly as for an unknown id, unless the caller owns the conversation (or is an admin): a
    stranger learns nothing, not even that it exists."""
    if not principal.owns(await store.conversation_owner(conversation_id)):
        raise NotFoundError("conversation", conversation_id)


@router.post("/agents", status_code=status.HTTP_201_CREATED)
async def create_agent(body: AgentCreate, container: ContainerDep, _: AdminDep) -> AgentOut:
    """Create an agent: a system prompt, the tools it may call and its sampling settings (admins)."""
    settings, tools = container.settings, container.tools
    allowed = body.allowed_tools if body.allowed_tools is not None else default_tool_names(settings, tools)
    unknown = sorted(set(allowed) - set(tools.names()))
    if unknown:
        raise ValidationError(f"unknown tools {unknown}; registered: {tools.names()}", field="allowed_tools")
    config = ModelConfig(body.temperature, body.max_tokens or settings.max_tokens, body.top_p)
    agent = Agent(
        body.name,
        config,
        allowed_tools=tuple(dict.fromkeys(allowed)),
        system_prompt=DEFAULT_SYSTEM_PROMPT if body.system_prompt is None else body.system_prompt,
        max_steps=body.max_steps or settings.max_steps,
    )
    await container.store.create_agent(agent)
    return AgentOut.of(agent)


@router.get("/agents")
async def list_agents(store: StoreDep, _: PrincipalDep) -> list[AgentOut]:
    """All agents."""
    return [AgentOut.of(agent) for agent in await store.list_agents()]


@router.post("/conversations", status_code=status.HTTP_201_CREATED)
async def create_conversation(
    body: ConversationCreate, container: ContainerDep, principal: PrincipalDep
) -> ConversationOut:
    """Start a conversation with an agent (the default agent when none is named); the caller owns it."""
    agent = await container.store.get_agent(body.agent_id) if body.agent_id else container.default_agent
    conversation = Conversation(agent.id, body.title, source="api", owner_id=principal.user_id)
    await container.store.create_conversation(conversation)
    return ConversationOut.of(conversation)


@router.get("/conversations")
async def list_conversations(
    store: StoreDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    agent_id: str | None = None,
) -> ConversationPage:
    """The caller's conversations (every one for admins), most recently updated first."""
    items, total = await store.list_conversations(
        limit, offset, agent_id=agent_id, owner_id=principal.owner_filter
    )
    return ConversationPage(
        items=[ConversationOut.of(c) for c in items], total=total, limit=limit, offset=offset
    )


@router.get("/conversations/{conversation_id}")
async def get_conversation(
    conversation_id: str, store: StoreDep, principal: PrincipalDep
) -> ConversationDetail:
    """A conversation with every message and tool step, in order."""
    conversation = await store.get_conversation(conversation_id)
    if not principal.owns(conversation.owner_id):
        raise NotFoundError("conversation", conversation_id)
    return ConversationDetail.of(conversation)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(
    conversation_id: str, store: StoreDep, principal: PrincipalDep, container: ContainerDep
) -> Response:
    """Delete a conversation and its messages."""
    await check_owner(store, conversation_id, principal)
    await (container.cache or container.store).delete_conversation(conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/conversations/{conversation_id}/messages")
async def post_message(
    conversation_id: str,
    body: MessageCreate,
    agents: AgentsDep,
    store: StoreDep,
    principal: PrincipalDep,
    request: Request,
    container: ContainerDep,
) -> TurnOut:
    """Send a message and run one agent turn to its answer; a dropped client cancels the turn. With
    `mode: "groupthink"` several samples answer and vote, and the consensus is stored and returned."""
    await check_owner(store, conversation_id, principal)
    with container.metrics.conversation_active(conversation_id):
        if body.mode == "groupthink" and container.groupthink is not None:
            answer = await unless_disconnected(
                request, container.groupthink.answer(conversation_id, body.content)
            )
            return groupthink_turn(answer)
        turn = await unless_disconnected(request, agents.ask(conversation_id, body.content))
    return TurnOut.of(turn)


@router.get("/tools")
async def list_tools(tools: ToolsDep, _: PrincipalDep) -> list[ToolOut]:
    """The tools agents may be allowed to call."""
    return [ToolOut.of(tool) for tool in tools.select(tools.names())]

"""FastAPI dependencies: the serving objects on app.state, as `Annotated` aliases for route signatures.

They are `async def` although they never await: FastAPI runs a plain `def` dependency in its thread pool,
a thread hop per dependency per request for an attribute read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from agentloop.adapters.storage.repository import SqlStore
from agentloop.application.agent import AgentService
from agentloop.application.ports import InferenceEngine
from agentloop.application.tools import ToolRegistry
from agentloop.bootstrap import Container


async def get_container(connection: HTTPConnection) -> Container:
    """The container the lifespan built; works for HTTP requests and WebSockets alike."""
    container: Container = connection.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_store(container: ContainerDep) -> SqlStore:
    return container.store


async def get_agents(container: ContainerDep) -> AgentService:
    return container.agents


async def get_engine(container: ContainerDep) -> InferenceEngine:
    return container.engine


async def get_tools(container: ContainerDep) -> ToolRegistry:
    return container.tools


StoreDep = Annotated[SqlStore, Depends(get_store)]
AgentsDep = Annotated[AgentService, Depends(get_agents)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
ToolsDep = Annotated[ToolRegistry, Depends(get_tools)]

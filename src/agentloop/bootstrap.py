"""The composition root: everything the server, worker and CLI use is built here and nowhere else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agentloop.adapters.model_files import ModelFile
from agentloop.adapters.storage.database import create_engine, upgrade
from agentloop.adapters.storage.repository import SqlStore
from agentloop.adapters.tools import builtin_tools
from agentloop.application.agent import AgentService
from agentloop.application.ports import InferenceEngine
from agentloop.application.tools import ToolRegistry
from agentloop.domain.model import Agent, ModelConfig
from agentloop.settings import Settings

DEFAULT_AGENT = "default"


@dataclass
class Container:
    settings: Settings
    engine: InferenceEngine
    store: SqlStore
    database: AsyncEngine
    tools: ToolRegistry
    agents: AgentService
    model_file: ModelFile | None
    default_agent: Agent


async def start_embedded_engine(settings: Settings) -> tuple[InferenceEngine, ModelFile]:
    """Assemble (first run only) and load the GGUF in-process."""
    from agentloop.adapters.inference.llama import LlamaEngine
    from agentloop.adapters.model_files import ensure_model

    model = await asyncio.to_thread(ensure_model, settings.model_path, settings.cache_dir)
    engine = LlamaEngine(
        model.path, n_ctx=settings.n_ctx, n_threads=settings.threads, n_batch=settings.n_batch
    )
    await engine.start()
    return engine, model


# Tool examples are shown in this order; a small model copies the nearest example most, so the tool it
# needs most often (the calculator) comes last.
TOOL_ORDER = ("current_time", "list_files", "read_file", "write_file", "fetch_url", "python", "calculator")


def default_tool_names(settings: Settings, tools: ToolRegistry) -> tuple[str, ...]:
    # fetch_url is useless (and tempting for a small model) until hosts are allow-listed.
    names = [n for n in tools.names() if n != "fetch_url" or settings.fetch_allowed_hosts]
    return tuple(sorted(names, key=lambda n: (TOOL_ORDER.index(n) if n in TOOL_ORDER else -1, n)))


async def ensure_default_agent(store: SqlStore, settings: Settings, tools: ToolRegistry) -> Agent:
    existing = await store.get_agent_by_name(DEFAULT_AGENT)
    if existing is not None:
        return existing
    agent = Agent(
        DEFAULT_AGENT,
        ModelConfig(max_tokens=settings.max_tokens),
        allowed_tools=default_tool_names(settings, tools),
        max_steps=settings.max_steps,
    )
    await store.create_agent(agent)
    return agent


@asynccontextmanager
async def bootstrap(settings: Settings, **overrides: Any) -> AsyncIterator[Container]:
    """Build the application; `overrides` replace parts by name (engine, tools) for tests."""
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    if settings.auto_migrate:
        await asyncio.to_thread(upgrade, url)
    database = create_engine(url)
    store = SqlStore(async_sessionmaker(database, expire_on_commit=False))
    tools: ToolRegistry = overrides.get("tools") or ToolRegistry(builtin_tools(settings))
    engine: InferenceEngine | None = overrides.get("engine")
    model_file: ModelFile | None = None
    try:
        if engine is None:
            engine, model_file = await start_embedded_engine(settings)
        agent = await ensure_default_agent(store, settings, tools)
        agents = AgentService(
            engine,
            store,
            tools,
            settings.workspace_dir,
            settings.max_message_chars,
            settings.single_line_answers,
        )
        yield Container(settings, engine, store, database, tools, agents, model_file, agent)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            await close()
        await database.dispose()

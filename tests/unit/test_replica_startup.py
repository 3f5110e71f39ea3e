"""Two replicas starting at once both find no default agent and both create it: the loser uses the winner."""

from __future__ import annotations

from typing import Any

import pytest

from agentloop.application.learning.registry import ModelRegistry, RecordOnlyHost
from agentloop.application.tools import ToolRegistry
from agentloop.bootstrap import DEFAULT_AGENT, ensure_default_agent
from agentloop.domain.learning import BASE_VERSION, ModelVersion
from agentloop.domain.model import Agent
from agentloop.errors import NotFoundError, ValidationError
from agentloop.settings import Settings


class RacedStore:
    """The other replica inserts the default agent between our lookup and our insert."""

    def __init__(self, winner: Agent | None) -> None:
        self.winner = winner
        self.lookups = 0

    async def get_agent_by_name(self, name: str) -> Agent | None:
        self.lookups += 1
        return None if self.lookups == 1 else self.winner

    async def create_agent(self, agent: Agent) -> None:
        raise ValidationError(f"an agent named {agent.name!r} already exists", field="name")


async def test_the_replica_that_loses_the_race_uses_the_winners_agent() -> None:
    winner = Agent(DEFAULT_AGENT)
    store: Any = RacedStore(winner)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert await ensure_default_agent(store, settings, ToolRegistry([])) is winner


async def test_a_real_validation_error_still_surfaces() -> None:
    store: Any = RacedStore(None)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        await ensure_default_agent(store, settings, ToolRegistry([]))


class RacedVersions:
    """The other replica stores the base version between our lookup and our insert."""

    def __init__(self) -> None:
        self.stored: ModelVersion | None = None

    async def get_version(self, version_id: str) -> ModelVersion:
        if self.stored is None:
            self.stored = ModelVersion(BASE_VERSION, "sha-of-the-winner")
            raise NotFoundError("model version", version_id)
        return self.stored

    async def serving_version(self) -> ModelVersion | None:
        return None

    async def add_version(self, version: ModelVersion) -> None:
        raise ValidationError(f"model version {version.id} already exists", field="id")


async def test_the_base_version_is_created_once_across_replicas() -> None:
    store: Any = RacedVersions()
    registry = ModelRegistry(store, RecordOnlyHost())
    base = await registry.ensure_base("sha-of-the-loser")
    assert base.base_sha256 == "sha-of-the-winner"

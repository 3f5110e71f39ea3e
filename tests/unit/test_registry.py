"""ModelRegistry with an in-memory version store, a fake adapter host and fake adapter files."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from agentloop.application.learning.registry import ModelRegistry
from agentloop.domain.events import Event, ModelUpdated
from agentloop.domain.learning import BASE_VERSION, ModelVersion, VersionStatus
from agentloop.errors import InferenceError, NotFoundError, StorageError, ValidationError

BASE_SHA = "b" * 64

Status = VersionStatus


class MemoryVersions:
    """A VersionStore keeping copies, so a caller's objects never alias stored state."""

    def __init__(self) -> None:
        self.versions: dict[str, ModelVersion] = {}
        self.events: list[Event] = []
        self.fail_saves: Exception | None = None

    async def get_version(self, version_id: str) -> ModelVersion:
        if version_id not in self.versions:
            raise NotFoundError("model version", version_id)
        return dataclasses.replace(self.versions[version_id])

    async def list_versions(self) -> list[ModelVersion]:
        newest = sorted(self.versions.values(), key=lambda v: v.created_at, reverse=True)
        return [dataclasses.replace(v) for v in newest]

    async def serving_version(self) -> ModelVersion | None:
        promoted = [v for v in self.versions.values() if v.status == Status.PROMOTED]
        return dataclasses.replace(promoted[0]) if promoted else None

    async def add_version(self, version: ModelVersion) -> None:
        if version.id in self.versions:
            raise ValidationError(f"model version {version.id} already exists")
        self.versions[version.id] = dataclasses.replace(version)

    async def save_versions(self, versions: Sequence[ModelVersion], events: Sequence[Event] = ()) -> None:
        if self.fail_saves is not None:
            raise self.fail_saves
        for version in versions:
            self.versions[version.id] = dataclasses.replace(version)
        self.events.extend(events)

    def statuses(self) -> dict[str, VersionStatus]:
        return {ident: v.status for ident, v in self.versions.items()}


class FakeHost:
    """An AdapterHost recording what it was told to serve; a scripted error refuses the next switch."""

    def __init__(self) -> None:
        self.served: list[tuple[str, Path | None]] = []
        self.refuse: Exception | None = None

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        if self.refuse is not None:
            error, self.refuse = self.refuse, None
            raise error
        self.served.append((version_id, adapter_path))

    @property
    def serving(self) -> str | None:
        return self.served[-1][0] if self.served else None


class FakeFiles:
    """Adapter files by path: their sha256, or absent."""

    def __init__(self) -> None:
        self.digests: dict[Path, str] = {}

    def sha256(self, path: Path) -> str:
        if path not in self.digests:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return self.digests[path]


class World:
    def __init__(self) -> None:
        self.store = MemoryVersions()
        self.host = FakeHost()
        self.files = FakeFiles()
        self.registry = ModelRegistry(self.store, self.host, file_sha256=self.files.sha256)

    def candidate(self, ident: str, **fields: object) -> ModelVersion:
        path = Path(f"/adapters/{ident}.gguf")
        self.files.digests[path] = ident * 8
        values: dict[str, object] = {
            "base_sha256": BASE_SHA,
            "parent_id": BASE_VERSION,
            "adapter_path": str(path),
            "adapter_sha256": ident * 8,
        }
        return ModelVersion(ident, **{**values, **fields})  # type: ignore[arg-type]

    async def chain(self, *idents: str) -> None:
        """base, then each version registered and promoted in turn."""
        await self.registry.ensure_base(BASE_SHA)
        for ident in idents:
            await self.registry.register(self.candidate(ident))
            await self.registry.promote(ident)


@pytest.fixture
def world() -> World:
    return World()


# --- base and registration ----------------------------------------------------------------------------------


async def test_ensure_base_creates_the_promoted_base_once(world: World) -> None:
    base = await world.registry.ensure_base(BASE_SHA)

    assert (base.id, base.status, base.is_base, base.base_sha256) == (
        BASE_VERSION,
        Status.PROMOTED,
        True,
        BASE_SHA,
    )
    assert base.promoted_at is not None
    assert await world.registry.ensure_base(BASE_SHA) == base
    assert await world.registry.serving() == base
    assert await world.registry.list() == [base]


async def test_register_stores_a_matching_candidate(world: World) -> None:
    await world.registry.ensure_base(BASE_SHA)
    v1 = world.candidate("v1")

    await world.registry.register(v1)

    assert world.store.versions["v1"] == v1
    assert world.store.statuses() == {BASE_VERSION: Status.PROMOTED, "v1": Status.CANDIDATE}
    assert world.host.served == []


async def test_register_refuses_a_candidate_of_another_base(world: World) -> None:
    await world.registry.ensure_base(BASE_SHA)

    with pytest.raises(ValidationError) as caught:
        await world.registry.register(world.candidate("v1", base_sha256="c" * 64))

    assert caught.value.field == "base_sha256"
    assert "v1" not in world.store.versions


@pytest.mark.parametrize("problem", ["missing", "tampered", "no-digest"])
async def test_register_refuses_a_bad_adapter_file(world: World, problem: str) -> None:
    await world.registry.ensure_base(BASE_SHA)
    v1 = world.candidate("v1")
    assert v1.adapter_path is not None
    if problem == "missing":
        del world.files.digests[Path(v1.adapter_path)]
    elif problem == "tampered":
        world.files.digests[Path(v1.adapter_path)] = "0" * 64
    else:
        v1.adapter_sha256 = None

    with pytest.raises(ValidationError) as caught:
        await world.registry.register(v1)

    assert caught.value.field in ("adapter_path", "adapter_sha256")
    assert "v1" not in world.store.versions


async def test_register_needs_a_base_and_an_adapter_candidate(world: World) -> None:
    with pytest.raises(NotFoundError):
        await world.registry.register(world.candidate("v1"))
    await world.registry.ensure_base(BASE_SHA)
    with pytest.raises(ValidationError):
        await world.registry.register(world.candidate("v1", adapter_path=None))
    with pytest.raises(ValidationError):
        await world.registry.register(world.candidate("v1", status=Status.REJECTED))
    assert list(world.store.versions) == [BASE_VERSION]


# --- promotion ----------------------------------------------------------------------------------------------


async def test_promote_swaps_the_host_then_retires_the_previous_version(world: World) -> None:
    await world.registry.ensure_base(BASE_SHA)
    await world.registry.register(world.candidate("v1"))

    event = await world.registry.promote("v1", metrics={"accuracy": 0.9})

    assert isinstance(event, ModelUpdated)
    assert (event.version_id, event.previous_version_id, event.reason) == ("v1", BASE_VERSION, "manual")
    assert world.host.served == [("v1", Path("/adapters/v1.gguf"))]
    assert world.store.statuses() == {BASE_VERSION: Status.RETIRED, "v1": Status.PROMOTED}
    assert world.store.versions["v1"].metrics == {"accuracy": 0.9}
    assert world.store.events == [event]
    serving = await world.registry.serving()
    assert serving is not None and serving.id == "v1"


async def test_promote_refusals(world: World) -> None:
    await world.chain("v1")

    with pytest.raises(NotFoundError):
        await world.registry.promote("v9")
    with pytest.raises(ValidationError):
        await world.registry.promote("v1")  # already serving
    assert world.host.served == [("v1", Path("/adapters/v1.gguf"))]


async def test_a_rejected_version_can_be_promoted_by_hand(world: World) -> None:
    await world.registry.ensure_base(BASE_SHA)
    await world.registry.register(world.candidate("v1"))

    rejected = await world.registry.reject("v1", {"accuracy": 0.2})
    assert rejected.status == Status.REJECTED and rejected.metrics == {"accuracy": 0.2}
    with pytest.raises(ValidationError):
        await world.registry.reject("v1", {})

    await world.registry.promote("v1", reason="operator override")
    assert world.store.statuses()["v1"] == Status.PROMOTED


async def test_a_failed_swap_leaves_everything_as_it_was(world: World) -> None:
    await world.chain("v1")
    await world.registry.register(world.candidate("v2"))
    before = dict(world.store.versions)
    world.host.refuse = InferenceError("llama.cpp refused the adapter")

    with pytest.raises(InferenceError):
        await world.registry.promote("v2")

    assert world.store.versions == before
    assert world.host.serving == "v1"
    assert [e.version_id for e in world.store.events if isinstance(e, ModelUpdated)] == ["v1"]


async def test_a_failed_save_swaps_the_host_back(world: World) -> None:
    await world.chain("v1")
    await world.registry.register(world.candidate("v2"))
    before = dict(world.store.versions)
    world.store.fail_saves = StorageError("database error")

    with pytest.raises(StorageError):
        await world.registry.promote("v2")

    assert world.store.versions == before
    assert [ident for ident, _ in world.host.served] == ["v1", "v2", "v1"]


async def test_an_adapter_changed_after_registration_is_not_served(world: World) -> None:
    await world.chain("v1")
    await world.registry.register(world.candidate("v2"))
    world.files.digests[Path("/adapters/v2.gguf")] = "0" * 64

    with pytest.raises(ValidationError):
        await world.registry.promote("v2")

    assert world.host.serving == "v1"
    assert world.store.statuses()["v2"] == Status.CANDIDATE


# --- rollback -----------------------------------------------------------------------------------------------


async def test_rollback_walks_back_the_chain_of_promotions(world: World) -> None:
    await world.chain("v1", "v2")

    first = await world.registry.rollback()
    assert (first.version_id, first.previous_version_id, first.reason) == ("v1", "v2", "rollback")
    assert world.store.statuses() == {
        BASE_VERSION: Status.RETIRED,
        "v1": Status.PROMOTED,
        "v2": Status.RETIRED,
    }
    assert world.host.served[-1] == ("v1", Path("/adapters/v1.gguf"))

    second = await world.registry.rollback()
    assert (second.version_id, second.previous_version_id) == (BASE_VERSION, "v1")
    assert world.host.served[-1] == (BASE_VERSION, None)

    with pytest.raises(ValidationError):
        await world.registry.rollback()
    assert world.store.statuses()[BASE_VERSION] == Status.PROMOTED


async def test_rollback_after_a_new_promotion_returns_to_what_served_before_it(world: World) -> None:
    await world.chain("v1", "v2")
    await world.registry.rollback()
    await world.registry.rollback()  # base serves again; v1 and v2 were undone
    await world.registry.register(world.candidate("v3"))
    await world.registry.promote("v3")

    event = await world.registry.rollback()

    assert (event.version_id, event.previous_version_id) == (BASE_VERSION, "v3")


async def test_rollback_after_promoting_an_older_version_returns_to_the_newer_one(world: World) -> None:
    await world.chain("v1", "v2")
    await world.registry.promote("v1")

    event = await world.registry.rollback()

    assert (event.version_id, event.previous_version_id) == ("v2", "v1")


async def test_rollback_needs_a_serving_version(world: World) -> None:
    with pytest.raises(ValidationError):
        await world.registry.rollback()


# --- host synchronisation -----------------------------------------------------------------------------------


async def test_sync_host_serves_the_stored_version_once(world: World) -> None:
    assert await world.registry.sync_host() is False  # nothing stored yet
    await world.registry.ensure_base(BASE_SHA)

    assert await world.registry.sync_host() is True
    assert await world.registry.sync_host() is False
    assert world.host.served == [(BASE_VERSION, None)]


async def test_sync_host_follows_a_promotion_made_by_another_process(world: World) -> None:
    await world.registry.ensure_base(BASE_SHA)
    await world.registry.sync_host()
    other_process = ModelRegistry(world.store, FakeHost(), file_sha256=world.files.sha256)
    await other_process.register(world.candidate("v1"))
    await other_process.promote("v1")

    assert await world.registry.sync_host() is True
    assert world.host.served[-1] == ("v1", Path("/adapters/v1.gguf"))

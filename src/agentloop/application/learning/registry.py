"""The model registry: which version serves, and the register / promote / rollback / reject life cycle.

The engine is switched first and the new state stored only once the switch worked, so the database never
names a version the engine refused; when storing fails, the engine is switched back.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

from agentloop.application.ports import AdapterHost
from agentloop.domain.events import Event, ModelUpdated
from agentloop.domain.learning import BASE_VERSION, ModelVersion, VersionStatus
from agentloop.errors import AgentLoopError, NotFoundError, ValidationError

logger = logging.getLogger(__name__)

NEVER = datetime.min.replace(tzinfo=UTC)


class VersionStore(Protocol):
    async def get_version(self, version_id: str) -> ModelVersion: ...

    async def list_versions(self) -> builtins.list[ModelVersion]: ...

    async def serving_version(self) -> ModelVersion | None: ...

    async def add_version(self, version: ModelVersion) -> None: ...

    async def save_versions(self, versions: Sequence[ModelVersion], events: Sequence[Event] = ()) -> None: ...


def adapter_host_of(engine: object) -> AdapterHost | None:
    """The engine as an AdapterHost if it can switch model versions (the embedded one can), else None."""
    return cast(AdapterHost, engine) if callable(getattr(engine, "serve_version", None)) else None


class RecordOnlyHost:
    """The AdapterHost where no engine runs (the CLI): a switch is only recorded; a server picks it up."""

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    """Model versions and the one the host serves. One operation at a time per process."""

    def __init__(
        self,
        store: VersionStore,
        host: AdapterHost,
        file_sha256: Callable[[Path], str] = sha256_file,
    ) -> None:
        self._store = store
        self._host = host
        self._file_sha256 = file_sha256
        self._lock = asyncio.Lock()
        self._served: str | None = None

    async def ensure_base(self, base_sha256: str) -> ModelVersion:
        """The "base" version (the GGUF without adapter); created, and promoted if nothing serves, once."""
        async with self._lock:
            try:
                return await self._store.get_version(BASE_VERSION)
            except NotFoundError:
                base = ModelVersion(BASE_VERSION, base_sha256)
                if await self._store.serving_version() is None:
                    base.transition(VersionStatus.PROMOTED)
                try:
                    await self._store.add_version(base)
                except ValidationError:
                    # Another replica starting at the same moment created it first.
                    return await self._store.get_version(BASE_VERSION)
                return base

    async def register(self, version: ModelVersion) -> None:
        """Store a trained candidate; refused unless it fits the base model and its adapter file is intact."""
        if version.status != VersionStatus.CANDIDATE:
            raise ValidationError(f"only candidates can be registered, not {version.status}", field="status")
        if version.adapter_path is None:
            raise ValidationError(f"version {version.id} has no adapter", field="adapter_path")
        base = await self._store.get_version(BASE_VERSION)
        if version.base_sha256 != base.base_sha256:
            raise ValidationError(
                f"version {version.id} was trained on base {version.base_sha256[:12]}, "
                f"but the base model is {base.base_sha256[:12]}",
                field="base_sha256",
            )
        await self._check_adapter(version)
        await self._store.add_version(version)

    async def promote(
        self, version_id: str, reason: str = "manual", metrics: Mapping[str, Any] | None = None
    ) -> ModelUpdated:
        """Serve this version from now on; the one serving so far is retired."""
        async with self._lock:
            target = await self._store.get_version(version_id)
            if metrics:
                target.metrics = {**target.metrics, **metrics}
            return await self._switch(await self._store.serving_version(), target, reason)

    async def rollback(self, reason: str = "rollback") -> ModelUpdated:
        """Undo the last promotion: serve again the version that served before the current one."""
        async with self._lock:
            current = await self._store.serving_version()
            if current is None:
                raise ValidationError(
                    "no version is serving, so there is nothing to roll back", field="version"
                )
            previous = _previously_served(current, await self._store.list_versions())
            if previous is None:
                raise ValidationError(
                    f"nothing to roll back to: {current.id} is the first version served", field="version"
                )
            return await self._switch(current, previous, reason, undo=True)

    async def reject(self, version_id: str, metrics: Mapping[str, Any]) -> ModelVersion:
        """Mark a candidate as failing the evaluation gate, with the metrics that failed it."""
        async with self._lock:
            version = await self._store.get_version(version_id)
            version.transition(VersionStatus.REJECTED)
            version.metrics = {**version.metrics, **metrics}
            await self._store.save_versions([version])
            return version

    async def serving(self) -> ModelVersion | None:
        """The promoted version, or None before the base exists."""
        return await self._store.serving_version()

    async def list(self) -> builtins.list[ModelVersion]:
        """Every version, newest first."""
        return await self._store.list_versions()

    async def sync_host(self) -> bool:
        """Make the host serve the stored promoted version (at startup, or after another process changed
        it); True if the host was switched."""
        async with self._lock:
            version = await self._store.serving_version()
            if version is None or version.id == self._served:
                return False
            await self._check_adapter(version)
            await self._serve(version)
            return True

    async def follow(self, interval_s: float) -> None:
        """Keep the host on the stored promoted version, checking every `interval_s`; runs until cancelled."""
        while True:
            try:
                await self.sync_host()
            except AgentLoopError as exc:
                logger.warning("could not switch to the promoted model version: %s", exc)
            await asyncio.sleep(interval_s)

    async def _switch(
        self, current: ModelVersion | None, target: ModelVersion, reason: str, undo: bool = False
    ) -> ModelUpdated:
        if current is not None and current.id == target.id:
            raise ValidationError(f"version {target.id} is already serving", field="version")
        promoted = dataclasses.replace(target)
        promoted.transition(VersionStatus.PROMOTED)
        changed = [promoted]
        if current is not None:
            retired = dataclasses.replace(current)
            retired.transition(VersionStatus.RETIRED)
            changed.insert(0, retired)
        if undo and current is not None:
            # An undone promotion leaves no trace in the order of promotions: the restored version keeps its
            # original promoted_at and the undone one loses its own, so a second rollback steps further back.
            promoted.promoted_at = target.promoted_at
            changed[0].promoted_at = None
        await self._check_adapter(promoted)
        event = ModelUpdated(
            version_id=target.id, previous_version_id=None if current is None else current.id, reason=reason
        )
        await self._serve(promoted)
        try:
            await self._store.save_versions(changed, [event])
        except Exception:
            if current is not None:
                await self._serve(current)
            raise
        return event

    async def _serve(self, version: ModelVersion) -> None:
        adapter = None if version.adapter_path is None else Path(version.adapter_path)
        await self._host.serve_version(version.id, adapter)
        self._served = version.id

    async def _check_adapter(self, version: ModelVersion) -> None:
        if version.adapter_path is None:
            return
        path = Path(version.adapter_path)
        try:
            digest = await asyncio.to_thread(self._file_sha256, path)
        except OSError as exc:
            raise ValidationError(
                f"adapter file of version {version.id} cannot be read: {path} ({exc.strerror or exc})",
                field="adapter_path",
            ) from exc
        if digest != version.adapter_sha256:
            raise ValidationError(
                f"adapter file {path} does not match version {version.id}: sha256 {digest[:12]}, "
                f"expected {(version.adapter_sha256 or 'none')[:12]}",
                field="adapter_sha256",
            )


def _previously_served(current: ModelVersion, versions: Sequence[ModelVersion]) -> ModelVersion | None:
    served_since = current.promoted_at or NEVER
    earlier = [
        v
        for v in versions
        if v.status == VersionStatus.RETIRED and NEVER < (v.promoted_at or NEVER) < served_since
    ]
    return max(earlier, key=lambda v: v.promoted_at or NEVER, default=None)

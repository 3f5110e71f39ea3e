"""Liveness (the process answers) and readiness (the model and the database work)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from agentloop.adapters.storage.database import ping
from agentloop.bootstrap import Container
from agentloop.entrypoints.api.deps import ContainerDep
from agentloop.entrypoints.api.schemas import Live, Ready
from agentloop.errors import AgentLoopError

router = APIRouter(prefix="/health", tags=["health"])

CHECK_TIMEOUT_S = 2.0


async def _model_check(container: Container) -> dict[str, Any]:
    engine, model_file = container.engine, container.model_file
    check: dict[str, Any] = {
        "ok": True,
        "version": engine.model_version,
        "path": str(model_file.path) if model_file else None,
    }
    # Remote backends answer a probe; the embedded engine tokenises (needs the loaded model but no
    # generation slot, so it is cheap even while busy).
    probe = getattr(engine, "probe", None)
    try:
        await asyncio.wait_for(probe() if probe else engine.count_tokens("ping"), CHECK_TIMEOUT_S)
    except (AgentLoopError, TimeoutError) as exc:
        check.update(ok=False, error=str(exc) or type(exc).__name__)
    backends = getattr(engine, "health", None)
    if backends is not None:
        check["backends"] = backends()
    return check


async def _database_check(container: Container) -> dict[str, Any]:
    try:
        await asyncio.wait_for(ping(container.database), CHECK_TIMEOUT_S)
    except (AgentLoopError, TimeoutError) as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    return {"ok": True}


async def _cache_check(container: Container) -> dict[str, Any] | None:
    """Optional: without Redis the server serves from the database alone, so this never fails readiness."""
    cache = container.cache
    if cache is None:
        return None
    check: dict[str, Any] = {"ok": True, "breaker": cache.breaker.snapshot(), **cache.stats.to_dict()}
    try:
        await asyncio.wait_for(cache.ping(), CHECK_TIMEOUT_S)
    except Exception as exc:  # any Redis failure: report it, serve on
        check.update(ok=False, error=str(exc) or type(exc).__name__)
    return check


@router.get("/live")
async def live() -> Live:
    """The process is up and serving requests."""
    return Live()


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(container: ContainerDep) -> JSONResponse:
    """Ready to answer: the model is loaded and the database reachable (503 otherwise). The Redis cache is
    reported too; without it the server still answers (status "degraded", 200)."""
    model, database, cache = await asyncio.gather(
        _model_check(container), _database_check(container), _cache_check(container)
    )
    ok = model["ok"] and database["ok"]
    checks = {"model": model, "database": database} | ({"cache": cache} if cache else {})
    healthy = ok and (cache is None or cache["ok"])
    body = Ready(status="ok" if healthy else "degraded", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

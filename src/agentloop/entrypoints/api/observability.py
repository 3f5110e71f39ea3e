"""Correlation ids and request metrics for every HTTP request and WebSocket, and GET /metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import structlog
from fastapi import APIRouter, Response
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentloop.adapters.metrics import CONTENT_TYPE, LearningState, state_families
from agentloop.entrypoints.api.deps import ContainerDep
from agentloop.errors import AgentLoopError

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept when it is a plain token; anything else (too long, spaces, control characters that
# could forge log lines) is replaced by a fresh one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
# Probes and scrapes come every few seconds; their request lines would drown the rest at INFO.
_QUIET_PATHS = ("/metrics", "/health/live", "/health/ready")

log = structlog.get_logger("agentloop.http")
logger = logging.getLogger(__name__)

router = APIRouter(tags=["observability"])


def request_id_from(value: str | None) -> str:
    """The caller's X-Request-ID if it is a plain token of at most 128 characters, else a new id."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The path template of the route that serves `scope` (`/api/v1/conversations/{conversation_id}`), so
    metrics get one series per route rather than one per id; "unmatched" when no route does."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for candidate in getattr(scope.get("app"), "routes", ()):
        template = getattr(candidate, "path", None)  # included routers and mounts may have none
        if isinstance(template, str) and candidate.matches(scope)[0] == Match.FULL:
            return template
    return "unmatched"


class RequestContext:
    """ASGI middleware: binds the request's correlation id to every log line written while it runs (and to
    jobs it queues), returns it as X-Request-ID, and records the request's duration and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.accept"):
                status = int(message.get("status", 101))
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = route_template(scope)
        method = scope.get("method", "WS")
        container = getattr(getattr(scope.get("app"), "state", None), "container", None)
        if container is not None and scope["type"] == "http":
            container.metrics.observe_request(method, endpoint, status, seconds)
        level = logging.DEBUG if scope.get("path") in _QUIET_PATHS else logging.INFO
        log.log(
            level,
            "request",
            method=method,
            path=scope.get("path"),
            endpoint=endpoint,
            status=status,
            duration_ms=round(seconds * 1000.0, 1),
        )


@router.get("/metrics", include_in_schema=False)
async def metrics(container: ContainerDep) -> Response:
    """Prometheus metrics of every process of this server, plus the learning loop's state."""
    state: list[Any] = []
    store = container.learning_store
    try:
        state = state_families(
            LearningState(
                serving_version=container.engine.model_version,
                jobs_by_status=await store.count_jobs_by_status(),
                versions=await store.list_versions(),
                active_job=await store.active_job(),
            )
        )
    except AgentLoopError as exc:
        # The database is down: still export what the processes counted.
        logger.warning("metrics without the learning state: %s", exc)
    return Response(container.metrics.exposition(state), media_type=CONTENT_TYPE)

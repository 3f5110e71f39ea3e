"""Who is calling, and the guards in front of every route: bearer authentication and roles (FastAPI
dependencies), per-IP rate limits, the body-size limit, security headers and CORS (ASGI middleware)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentloop.bootstrap import Container
from agentloop.domain.auth import LOCAL_ADMIN, Principal, Role
from agentloop.entrypoints.api.deps import ContainerDep
from agentloop.entrypoints.api.errors import problem_from, render
from agentloop.errors import (
    AgentLoopError,
    AuthenticationError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from agentloop.settings import Settings

# Documents the scheme in /openapi.json (so clients and schemathesis know to send it); errors are ours.
bearer_scheme = HTTPBearer(auto_error=False, description="An access token or an API key.")
UNLIMITED_PREFIXES = ("/health",)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "testclient":  # Starlette's TestClient names its peer so; servers always give an address
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_ip(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client else "unknown"


async def authenticate(connection: HTTPConnection, container: Container, token: str | None) -> Principal:
    """The caller of a request or WebSocket; AuthenticationError when it has no valid credential."""
    if not container.settings.auth_enabled:
        # `serve` refuses to bind elsewhere with auth off; this holds however else the app is served.
        if not is_loopback(client_ip(connection)):
            raise AuthenticationError("authentication is disabled, so only loopback clients are served")
        return LOCAL_ADMIN
    if not token:
        raise AuthenticationError("missing bearer token: send 'Authorization: Bearer <token or API key>'")
    principal = await container.auth.authenticate(token)
    await container.limiter.hit("user", principal.user_id)
    return principal


async def current_principal(
    request: Request,
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    principal = await authenticate(request, container, credentials.credentials if credentials else None)
    request.state.principal = principal
    return principal


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through callers whose role includes `role` (403 otherwise)."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.has(role):
            raise PermissionDeniedError(f"this needs the {role} role; you are {principal.role}")
        return principal

    return check


PrincipalDep = Annotated[Principal, Depends(current_principal)]
TrainerDep = Annotated[Principal, Depends(require(Role.TRAINER))]
AdminDep = Annotated[Principal, Depends(require(Role.ADMIN))]


def socket_token(websocket: WebSocket) -> str | None:
    """Browsers cannot set headers on a WebSocket: the token comes as ?access_token=, or as a header."""
    token = websocket.query_params.get("access_token")
    if token:
        return token
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


# --- ASGI middleware ----------------------------------------------------------------------------------------


async def _send_problem(scope: Scope, receive: Receive, send: Send, exc: AgentLoopError) -> None:
    response = render(Request(scope, receive), problem_from(exc))
    await response(scope, receive, send)


class SecurityHeaders:
    """Headers that make browsers refuse framing, sniffing and referrer leaks, on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*SECURITY_HEADERS, *([HSTS] if scope.get("scheme") == "https" else [])]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((name, value) for name, value in extra if name not in present),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class IpRateLimit:
    """Counts every HTTP request against its client address (health checks excepted); 429 over the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        container = _container(scope)
        limited = scope["type"] == "http" and not scope["path"].startswith(UNLIMITED_PREFIXES)
        if limited and container is not None:
            client = scope.get("client")
            try:
                await container.limiter.hit("ip", client[0] if client else "unknown")
            except AgentLoopError as exc:
                await _send_problem(scope, receive, send, exc)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over `max_body_bytes` with 413, whether announced by Content-Length or sent
    chunked (read into memory up to the limit, then replayed to the app)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        container = _container(scope)
        if scope["type"] != "http" or container is None:
            await self.app(scope, receive, send)
            return
        limit = container.settings.max_body_bytes
        too_large = PayloadTooLargeError(f"request body is over the {limit}-byte limit", field="body")
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_problem(scope, receive, send, too_large)
            return
        body, more = await _read_body(receive, limit)
        if body is None:
            await _send_problem(scope, receive, send, too_large)
            return
        await self.app(scope, _replay(body, more, receive), send)


def _container(scope: Scope) -> Container | None:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "container", None)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, list[Message]]:
    """The whole body (None when over the limit) and any non-body message received after it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), [message]
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, []
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), []


def _replay(body: bytes, pending: list[Message], receive: Receive) -> Receive:
    queue: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *pending]

    async def replay() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replay


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add the middleware; the last added runs first, so security headers wrap even a 413 or 429."""
    app.add_middleware(BodyLimit)
    app.add_middleware(IpRateLimit)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)

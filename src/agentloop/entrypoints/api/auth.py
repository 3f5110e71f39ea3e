"""/api/v1/auth: log in for a token pair, rotate the refresh token, log out, and who am I."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, Field

from agentloop.application.auth import TokenPair
from agentloop.domain.auth import MAX_PASSWORD_CHARS
from agentloop.entrypoints.api.deps import ContainerDep
from agentloop.entrypoints.api.schemas import Body
from agentloop.entrypoints.api.security import PrincipalDep, client_ip

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Bad credentials or token, with the reason in `detail`."}
}


class LoginRequest(Body):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


class RefreshRequest(Body):
    refresh_token: str = Field(min_length=1, max_length=200)


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int = Field(description="Seconds the access token stays valid.")

    @classmethod
    def of(cls, pair: TokenPair) -> TokenOut:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            token_type=pair.token_type,
            expires_in=pair.expires_in,
        )


class MeOut(BaseModel):
    username: str
    role: str


@router.post("/token", responses=UNAUTHORIZED)
async def login(body: LoginRequest, container: ContainerDep, request: Request) -> TokenOut:
    """Exchange a user name and password for an access token (RS256 JWT) and a refresh token."""
    await container.limiter.hit("login", client_ip(request))
    return TokenOut.of(await container.auth.login(body.username, body.password))


@router.post("/refresh", responses=UNAUTHORIZED)
async def refresh(body: RefreshRequest, container: ContainerDep, request: Request) -> TokenOut:
    """Rotate: spend the refresh token for a new pair. Reusing a spent one revokes the whole login."""
    await container.limiter.hit("login", client_ip(request))
    return TokenOut.of(await container.auth.refresh(body.refresh_token))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=UNAUTHORIZED)
async def logout(body: RefreshRequest, container: ContainerDep, request: Request) -> Response:
    """Revoke the login of this refresh token, its access tokens included."""
    await container.limiter.hit("login", client_ip(request))
    await container.auth.logout(body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", responses=UNAUTHORIZED)
async def me(principal: PrincipalDep) -> MeOut:
    """The caller's user name and role."""
    return MeOut(username=principal.username, role=principal.role.value)

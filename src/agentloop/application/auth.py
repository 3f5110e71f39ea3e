"""Authentication: users log in for an access token (short-lived, signed) and a refresh token (opaque,
stored by hash, rotated on every use); service clients use API keys (stored by hash).

A refresh token presented a second time has leaked (or been stolen and used first): the whole family of
tokens that grew from that login is revoked, access tokens included.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentloop.application.credentials import CredentialCache, FreshReader
from agentloop.domain.auth import (
    ApiKey,
    Principal,
    RefreshSession,
    Role,
    User,
    check_password,
    check_username,
    parse_role,
)
from agentloop.domain.model import new_id, utcnow
from agentloop.errors import AuthenticationError, ConflictError, ValidationError

API_KEY_PREFIX = "alk_"
REFRESH_PREFIX = "alr_"
TOKEN_BYTES = 32
BAD_CREDENTIALS = "invalid user name or password"


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password_hash: str, password: str) -> bool: ...


class TokenCodec(Protocol):
    """Signs claims into a token and checks one; `decode` raises AuthenticationError saying why."""

    def encode(self, claims: dict[str, Any]) -> str: ...

    def decode(self, token: str) -> dict[str, Any]: ...


class AuthStore(Protocol):
    async def add_user(self, user: User) -> None: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_user_by_name(self, username: str) -> User | None: ...

    async def add_api_key(self, key: ApiKey) -> None: ...

    async def get_api_key(self, key_hash: str) -> ApiKey | None: ...

    async def add_session(self, session: RefreshSession) -> None: ...

    async def get_session(self, token_hash: str) -> RefreshSession | None: ...

    async def use_session(self, session_id: str) -> bool:
        """Mark a session used; False when it already was (another request rotated it first)."""
        ...

    async def revoke_family(self, family_id: str) -> None: ...

    async def family_revoked(self, family_id: str) -> bool: ...

    async def revocations(self) -> int:
        """A counter every revocation (API key, disabled user, revoked login) bumps when it commits."""
        ...


@dataclass(frozen=True)
class AuthConfig:
    issuer: str = "agentloop"
    audience: str = "agentloop-api"
    access_ttl_s: int = 1800
    refresh_ttl_s: int = 86400
    # Remember verified credentials until the next revocation (application/credentials.py, ADR-0011).
    cache_credentials: bool = False


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret


def token_hash(token: str) -> str:
    """The stored form of a refresh token or API key: they are random, so an unsalted hash suffices."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AuthService:
    def __init__(
        self,
        store: AuthStore,
        hasher: PasswordHasher,
        codec: TokenCodec,
        config: AuthConfig,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.codec = codec
        self.config = config
        self.clock = clock
        self._dummy_hash: str | None = None
        self.cache: CredentialCache | None = CredentialCache() if config.cache_credentials else None
        self.revocations = FreshReader(store.revocations)

    # Hashing costs tens of milliseconds by design: it runs in a thread, never on the event loop.
    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self.hasher.verify, password_hash, password)

    # --- users and keys ---------------------------------------------------------------------------------

    async def create_user(self, username: str, role: Role | str, password: str) -> User:
        """A new user; ConflictError if the name is taken."""
        check_username(username)
        check_password(password)
        if await self.store.get_user_by_name(username) is not None:
            raise ConflictError(f"user {username!r} already exists")
        wanted = role if isinstance(role, Role) else parse_role(role)
        user = User(username, wanted, await self._hash(password))
        await self.store.add_user(user)
        return user

    async def create_api_key(self, name: str, role: Role | str, owner: Principal) -> tuple[ApiKey, str]:
        """A new API key acting for `owner` with at most the owner's role; the plain key is returned once."""
        wanted = role if isinstance(role, Role) else parse_role(role)
        if not owner.has(wanted):
            raise ValidationError(f"a {owner.role} cannot create a {wanted} key", field="role")
        if not name.strip() or len(name) > 100:
            raise ValidationError("an API key needs a name of 1-100 characters", field="name")
        plain = API_KEY_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        key = ApiKey(name.strip(), wanted, token_hash(plain), owner.user_id)
        await self.store.add_api_key(key)
        return key, plain

    # --- tokens -----------------------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> TokenPair:
        user = await self.store.get_user_by_name(username)
        if user is None:
            # Verify against a throwaway hash, so an unknown name fails as slowly as a wrong password.
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
            await self._verify(self._dummy_hash, password)
            raise AuthenticationError(BAD_CREDENTIALS)
        if not await self._verify(user.password_hash, password) or user.disabled:
            raise AuthenticationError(BAD_CREDENTIALS)
        return await self._issue(user, new_id())

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new pair issued in the same family."""
        session = await self._session(refresh_token)
        if session.used or not await self.store.use_session(session.id):
            await self.store.revoke_family(session.family_id)
            raise AuthenticationError("refresh token reuse detected: every token of this login is revoked")
        user = await self.store.get_user(session.user_id)
        if user is None or user.disabled:
            raise AuthenticationError("the user of this refresh token no longer exists")
        return await self._issue(user, session.family_id)

    async def logout(self, refresh_token: str) -> None:
        """Revoke the login this refresh token belongs to (its access tokens stop working too)."""
        session = await self.store.get_session(token_hash(refresh_token))
        if session is None:
            raise AuthenticationError("invalid refresh token")
        await self.store.revoke_family(session.family_id)

    async def authenticate(self, bearer: str) -> Principal:
        """The caller behind an access token or API key; AuthenticationError saying why not."""
        if self.cache is None:
            principal, _ = await self._check(bearer)
            return principal
        digest = token_hash(bearer)
        # Read before verifying: an entry is trusted only while no revocation has committed since this read.
        revocations = await self.revocations.get()
        cached = self.cache.get(digest, revocations)
        if cached is not None:
            return cached
        principal, lifetime_s = await self._check(bearer)
        self.cache.put(digest, principal, revocations, lifetime_s)
        return principal

    async def _check(self, bearer: str) -> tuple[Principal, float | None]:
        """The principal of a credential, checked against the store, and how much longer the credential
        itself is valid (None: until revoked)."""
        if bearer.startswith(API_KEY_PREFIX):
            return await self._api_key(bearer), None
        claims = self.codec.decode(bearer)
        if claims.get("typ") != "access":
            raise AuthenticationError("not an access token")
        family = str(claims.get("fam", ""))
        if not family or await self.store.family_revoked(family):
            raise AuthenticationError("token revoked")
        user = await self.store.get_user(str(claims.get("sub", "")))
        if user is None or user.disabled:
            raise AuthenticationError("unknown user")
        expires = claims.get("exp")
        lifetime_s = float(expires) - self.clock().timestamp() if isinstance(expires, int | float) else 0.0
        return user.principal, lifetime_s

    async def access_token_for(self, user: User) -> TokenPair:
        """A fresh login for `user` without a password (the CLI's `users create --token`)."""
        return await self._issue(user, new_id())

    # --- internals --------------------------------------------------------------------------------------

    async def _issue(self, user: User, family_id: str) -> TokenPair:
        now = self.clock()
        claims = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": user.id,
            "name": user.username,
            "role": user.role.value,
            "typ": "access",
            "fam": family_id,
            "jti": new_id(),
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.config.access_ttl_s)).timestamp()),
        }
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        expires = now + timedelta(seconds=self.config.refresh_ttl_s)
        await self.store.add_session(RefreshSession(user.id, family_id, token_hash(refresh), expires))
        return TokenPair(self.codec.encode(claims), refresh, self.config.access_ttl_s)

    async def _session(self, refresh_token: str) -> RefreshSession:
        session = await self.store.get_session(token_hash(refresh_token))
        if session is None:
            raise AuthenticationError("invalid refresh token")
        if session.revoked:
            raise AuthenticationError("refresh token revoked")
        if session.expired(self.clock()):
            raise AuthenticationError("refresh token expired")
        return session

    async def _api_key(self, plain: str) -> Principal:
        key = await self.store.get_api_key(token_hash(plain))
        # The lookup is by hash; comparing again in constant time costs nothing and documents the intent.
        if key is None or key.revoked or not hmac.compare_digest(key.key_hash, token_hash(plain)):
            raise AuthenticationError("invalid API key")
        # A key acts for its owner: a disabled owner's keys stop working too (keys made for the local admin
        # by the CLI have no user row).
        owner = await self.store.get_user(key.user_id)
        if owner is not None and owner.disabled:
            raise AuthenticationError("invalid API key")
        return key.principal

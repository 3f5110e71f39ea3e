"""The libraries behind authentication: RS256 JWTs (PyJWT), RSA key files (cryptography), argon2 password
hashes (argon2-cffi) and rate limits (`limits`, in memory or in Redis)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import ConfigurationError
from limits.errors import StorageError as LimitsStorageError
from limits.storage import storage_from_string
from limits.util import WindowStats
from redis.exceptions import RedisError

from agentloop.errors import AuthenticationError, RateLimitedError, StorageError, ValidationError

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
KEY_BITS = 2048
LEEWAY_S = 5
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]

# Why a token failed, in words a client can act on; anything else is "invalid token".
_JWT_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidAlgorithmError, f"token algorithm is not accepted (only {ALGORITHM})"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
)


@dataclass(frozen=True)
class KeyPair:
    private_key: rsa.RSAPrivateKey
    public_key: rsa.RSAPublicKey

    @property
    def kid(self) -> str:
        der = self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()[:16]

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def generate_key_pair() -> KeyPair:
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return KeyPair(private, private.public_key())


def load_key_pair(private_file: Path, public_file: Path | None = None) -> KeyPair:
    """Read a PEM private key (and check the public one, if given, belongs to it). Loading validates the
    RSA key, which takes a noticeable fraction of a second, so a process loads each unchanged file once."""
    try:
        stamp = tuple((str(f), f.stat().st_mtime_ns) for f in (private_file, public_file) if f is not None)
    except OSError as exc:
        raise ValidationError(f"cannot read the JWT key files: {exc}", field="jwt_private_key_file") from exc
    if stamp not in _LOADED:
        _LOADED[stamp] = _load_key_pair(private_file, public_file)
    return _LOADED[stamp]


_LOADED: dict[tuple[tuple[str, int], ...], KeyPair] = {}


def _load_key_pair(private_file: Path, public_file: Path | None) -> KeyPair:
    try:
        private = serialization.load_pem_private_key(private_file.read_bytes(), password=None)
        public = (
            serialization.load_pem_public_key(public_file.read_bytes())
            if public_file is not None
            else private.public_key()
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ValidationError(f"cannot read the JWT key files: {exc}", field="jwt_private_key_file") from exc
    if not isinstance(private, rsa.RSAPrivateKey) or not isinstance(public, rsa.RSAPublicKey):
        raise ValidationError("the JWT keys must be RSA keys (RS256)", field="jwt_private_key_file")
    pair = KeyPair(private, public)
    if pair.public_key.public_numbers() != private.public_key().public_numbers():
        raise ValidationError(
            "the JWT public key does not belong to the private key", field="jwt_public_key_file"
        )
    return pair


def ensure_key_pair(key_dir: Path) -> KeyPair:
    """The key pair in `key_dir`, generated on first use (private key readable by its owner only)."""
    private_file, public_file = key_dir / "jwt_private.pem", key_dir / "jwt_public.pem"
    if private_file.exists():
        return load_key_pair(private_file)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pair = generate_key_pair()
    pem = pair.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: two processes starting at once must not both write (and disagree on) the key.
    try:
        fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key_pair(private_file)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_file.write_bytes(pair.public_pem())
    return pair


class JwtCodec:
    """RS256 only: the algorithm list is fixed, so `alg: none` and HS256-with-the-public-key are refused."""

    def __init__(self, keys: KeyPair, issuer: str, audience: str) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    def encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.keys.private_key, algorithm=ALGORITHM, headers={"kid": self.keys.kid})

    def decode(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.keys.public_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.InvalidTokenError as exc:
            reason = next((text for kind, text in _JWT_REASONS if isinstance(exc, kind)), "invalid token")
            raise AuthenticationError(reason) from exc
        return claims


class Argon2Hasher:
    """argon2id; the settings choose the cost (tests use cheap parameters)."""

    def __init__(self, time_cost: int = 2, memory_kib: int = 19456, parallelism: int = 1) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


@dataclass(frozen=True)
class Limits:
    per_user: str = "120/minute"
    per_ip: str = "600/minute"
    login: str = "10/minute"


class RateLimiter:
    """Sliding-window limits per key; counters in memory (one process) or Redis (shared by every server).

    A sliding window *counter* (two fixed-window counters, the previous one weighted by how much of it still
    overlaps the last `period`): constant time and memory per key whatever the limit, where a moving window
    keeps every request of the period per key and, in memory, re-sorts its lists on a thread after each hit
    (ADR-0006 amendment). It assumes the previous window's requests were spread evenly."""

    def __init__(self, limits: Limits, storage: Storage) -> None:
        try:
            self.items: dict[str, RateLimitItem] = {
                "user": parse(limits.per_user),
                "ip": parse(limits.per_ip),
                "login": parse(limits.login),
            }
        except ValueError as exc:
            raise ValidationError(f"invalid rate limit: {exc}", field="rate_limit") from exc
        self.storage = storage
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        # When the shared counters (Redis) are unreachable the limits still hold, per process, until they
        # return: a cache outage must not take the API down (issue "production": serve without Redis).
        self.fallback = SlidingWindowCounterRateLimiter(MemoryStorage())

    async def hit(self, kind: str, key: str) -> None:
        """Count one request; RateLimitedError with the seconds to wait once the limit is reached."""
        item = self.items[kind]
        try:
            stats = await self._hit(self.strategy, item, kind, key)
        except (ConnectionError, OSError, ConfigurationError, RedisError, LimitsStorageError) as exc:
            if isinstance(self.storage, MemoryStorage):
                raise StorageError(f"rate-limit storage unavailable: {type(exc).__name__}") from exc
            logger.warning("rate-limit storage unavailable (%s): counting per process", type(exc).__name__)
            stats = await self._hit(self.fallback, item, kind, key)
        if stats is None:
            return
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitedError(f"rate limit of {item} per {kind} exceeded; retry in {wait}s", wait)

    @staticmethod
    async def _hit(
        strategy: SlidingWindowCounterRateLimiter, item: RateLimitItem, kind: str, key: str
    ) -> WindowStats | None:
        """None when the request is allowed, else the window's stats (for Retry-After)."""
        if await strategy.hit(item, kind, key):
            return None
        return await strategy.get_window_stats(item, kind, key)


def rate_limit_storage(redis_url: str | None) -> Storage:
    """Redis when configured (limits shared across processes), else this process's memory."""
    if redis_url:
        storage = storage_from_string(f"async+{redis_url}", implementation="redispy")
        assert isinstance(storage, Storage)
        return storage
    return MemoryStorage()

"""The real JWT codec, key files, argon2 hasher and rate limiter, attacked directly: `alg: none`, HS256
signed with the public key (algorithm confusion), expired, foreign issuer or audience, tampered tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentloop.adapters.auth import (
    Argon2Hasher,
    JwtCodec,
    KeyPair,
    Limits,
    RateLimiter,
    ensure_key_pair,
    generate_key_pair,
    load_key_pair,
    rate_limit_storage,
)
from agentloop.errors import AuthenticationError, RateLimitedError, ValidationError
from auth_helpers import key_file

ISSUER, AUDIENCE = "agentloop", "agentloop-api"


@pytest.fixture(scope="module")
def keys() -> KeyPair:
    return load_key_pair(key_file())


@pytest.fixture(scope="module")
def codec(keys: KeyPair) -> JwtCodec:
    return JwtCodec(keys, ISSUER, AUDIENCE)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "role": "user", "iat": now, "exp": now + 600}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


def test_round_trip_and_kid(codec: JwtCodec, keys: KeyPair) -> None:
    token = codec.encode(claims())
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": keys.kid, "typ": "JWT"}
    assert codec.decode(token)["sub"] == "u1"


def test_alg_none_is_refused(codec: JwtCodec) -> None:
    for alg in ("none", "None", "NONE"):
        with pytest.raises(AuthenticationError, match="algorithm"):
            codec.decode(forged({"alg": alg, "typ": "JWT"}, claims(role="admin")))


def test_hs256_signed_with_the_public_key_is_refused(codec: JwtCodec, keys: KeyPair) -> None:
    # Algorithm confusion: a verifier that trusted the header would check this HMAC with the public key.
    header, payload = {"alg": "HS256", "typ": "JWT"}, claims(role="admin")
    signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())).encode()
    mac = hmac.new(keys.public_pem(), signing_input, hashlib.sha256).digest()
    with pytest.raises(AuthenticationError, match="algorithm"):
        codec.decode(signing_input.decode() + "." + b64(mac))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"iss": "someone-else"}, "issuer"),
        ({"aud": "another-api"}, "audience"),
        ({"exp": None}, "required claim"),
        ({"aud": None}, "required claim"),
    ],
)
def test_bad_claims_are_refused(codec: JwtCodec, changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(AuthenticationError, match=reason):
        codec.decode(codec.encode(claims(**changes)))


def test_tampered_tokens_are_refused(codec: JwtCodec) -> None:
    token = codec.encode(claims())
    head, payload, signature = token.split(".")
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    with pytest.raises(AuthenticationError, match="signature"):
        codec.decode(f"{head}.{payload}.{flipped}")
    promoted = b64(json.dumps(claims(role="admin")).encode())
    with pytest.raises(AuthenticationError, match="signature"):
        codec.decode(f"{head}.{promoted}.{signature}")
    for junk in ("", "garbage", "a.b.c", token + "x"):
        with pytest.raises(AuthenticationError):
            codec.decode(junk)


def test_a_token_from_another_key_is_refused(codec: JwtCodec) -> None:
    stranger = JwtCodec(generate_key_pair(), ISSUER, AUDIENCE)
    with pytest.raises(AuthenticationError, match="signature"):
        codec.decode(stranger.encode(claims()))


def test_key_pair_is_generated_once_and_private(tmp_path: Path) -> None:
    first = ensure_key_pair(tmp_path / "keys")
    private = tmp_path / "keys" / "jwt_private.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert ensure_key_pair(tmp_path / "keys").kid == first.kid
    assert load_key_pair(private, tmp_path / "keys" / "jwt_public.pem").kid == first.kid


def test_bad_key_files_are_clear_errors(tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(generate_key_pair().public_pem())
    with pytest.raises(ValidationError, match="does not belong"):
        load_key_pair(key_file(), other)
    with pytest.raises(ValidationError, match="cannot read"):
        load_key_pair(tmp_path / "missing.pem")
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValidationError, match="RSA"):
        load_key_pair(ec_key)


def test_argon2_hasher() -> None:
    hasher = Argon2Hasher(1, 8, 1)
    stored = hasher.hash("s3cret-pass")
    assert stored.startswith("$argon2id$") and "s3cret-pass" not in stored
    assert hasher.verify(stored, "s3cret-pass")
    assert not hasher.verify(stored, "wrong")
    assert not hasher.verify("not a hash", "s3cret-pass")


async def test_memory_rate_limit_answers_with_the_wait() -> None:
    # A day's window on the real clock (a minute's boundary would make the sliding count forget part of it;
    # the boundary itself is tested below on a fake clock).
    limiter = RateLimiter(Limits(per_user="3/day"), rate_limit_storage(None))
    for _ in range(3):
        await limiter.hit("user", "alice")
    with pytest.raises(RateLimitedError) as caught:
        await limiter.hit("user", "alice")
    assert 1 <= caught.value.retry_after_s <= 86_400
    await limiter.hit("user", "bob")  # counted per key


async def test_rate_limit_window_slides_over_the_minute_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full previous minute still counts (weighted by its overlap) after the boundary: unlike a fixed
    window, a burst at the end of one minute is not followed by a second full burst at the start of the
    next; capacity returns gradually as the previous minute slides out."""
    now = [6_000_000 * 60.0 + 50.0]  # 10 s before a minute boundary
    monkeypatch.setattr(time, "time", lambda: now[0])
    limiter = RateLimiter(Limits(per_user="6/minute"), rate_limit_storage(None))
    for _ in range(6):
        await limiter.hit("user", "alice")
    now[0] += 11.0  # 1 s into the next minute: the previous one overlaps by 59/60 and weighs 5.9 (floored)
    await limiter.hit("user", "alice")
    with pytest.raises(RateLimitedError) as caught:
        await limiter.hit("user", "alice")
    assert 1 <= caught.value.retry_after_s <= 60
    now[0] += 30.0  # 31 s in: the previous minute weighs 2.9, this one holds 1: three more fit
    for _ in range(3):
        await limiter.hit("user", "alice")
    with pytest.raises(RateLimitedError):
        await limiter.hit("user", "alice")
    now[0] += 120.0  # two minutes on, neither window holds a request
    for _ in range(6):
        await limiter.hit("user", "alice")


def test_bad_rate_limit_setting() -> None:
    with pytest.raises(ValidationError, match="rate limit"):
        RateLimiter(Limits(per_ip="lots"), rate_limit_storage(None))

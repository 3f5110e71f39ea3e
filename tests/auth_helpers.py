"""Test helpers for authentication: one RSA key pair per test process, cheap argon2, admin credentials."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from agentloop.adapters.auth import generate_key_pair
from agentloop.domain.auth import LOCAL_ADMIN, Role


@functools.cache
def key_file() -> Path:
    """A PEM private key generated once per process (key generation costs ~0.1 s)."""
    pair = generate_key_pair()
    folder = Path(tempfile.mkdtemp(prefix="agentloop-test-keys-"))
    path = folder / "jwt_private.pem"
    path.write_bytes(
        pair.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def fast_auth(**extra: Any) -> dict[str, Any]:
    """Settings fields for tests: the shared key and argon2 at its cheapest."""
    return {
        "jwt_private_key_file": key_file(),
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8,
        "argon2_parallelism": 1,
        **extra,
    }


async def admin_key(app: FastAPI) -> str:
    """A fresh admin API key on a started app."""
    _, plain = await app.state.container.auth.create_api_key("tests", Role.ADMIN, LOCAL_ADMIN)
    return str(plain)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

"""`agentloop users`, `agentloop api-keys` and the `serve` refusal, in-process over the real bootstrap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from typer.testing import CliRunner, Result

from agentloop.adapters.auth import load_key_pair
from agentloop.adapters.storage.auth_repository import SqlAuthStore
from agentloop.adapters.storage.database import create_engine, create_sessionmaker
from agentloop.application.auth import token_hash
from agentloop.entrypoints.cli import app
from auth_helpers import fast_auth, key_file
from fakes import FakeEngine


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    env: dict[str, str | None] = {
        "AGENTLOOP_DATA_DIR": None,
        "AGENTLOOP_DATABASE_URL": None,
        "AGENTLOOP_CACHE_DIR": str(tmp_path / "cache"),
        **{f"AGENTLOOP_{k.upper()}": str(v) for k, v in fast_auth().items()},
    }

    def run(*args: str, input: str | None = None, **extra_env: str) -> Result:
        return CliRunner().invoke(
            app,
            ["--data-dir", str(tmp_path / "data"), *args],
            input=input,
            env={**env, **extra_env},
            obj={"engine": FakeEngine()},
        )

    return run


def stored(tmp_path: Path, action: Any) -> Any:
    async def go() -> Any:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'agentloop.db'}")
        try:
            return await action(SqlAuthStore(create_sessionmaker(engine)))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_users_create_with_a_password_from_stdin(cli: Any, tmp_path: Path) -> None:
    result = cli("users", "create", "alice", "--role", "trainer", "--json", input="a piped password\n")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["username"] == "alice" and created["role"] == "trainer" and "password" not in created
    user = stored(tmp_path, lambda store: store.get_user_by_name("alice"))
    assert user.password_hash.startswith("$argon2id$") and "piped" not in user.password_hash


def test_users_create_generates_a_password_and_a_token(cli: Any) -> None:
    result = cli("users", "create", "me", "--role", "admin", "--token", input="")
    assert result.exit_code == 0, result.output
    assert "password (shown once):" in result.stderr
    token = result.stdout.strip()
    # An RS256 JWT signed with the configured key.
    public_key = load_key_pair(key_file()).public_key
    decoded = jwt.decode(token, public_key, algorithms=["RS256"], audience="agentloop-api")
    assert decoded["role"] == "admin" and decoded["name"] == "me"
    listed = cli("users", "ls", "--json")
    assert [u["username"] for u in json.loads(listed.stdout)] == ["me"]


def test_users_create_refusals(cli: Any) -> None:
    assert cli("users", "create", "bob", input="a long password\n").exit_code == 0
    duplicate = cli("users", "create", "bob", input="a long password\n")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.stderr
    bad_role = cli("users", "create", "eve", "--role", "root", input="a long password\n")
    assert bad_role.exit_code == 2 and "unknown role 'root'" in bad_role.stderr
    short = cli("users", "create", "eve", input="short\n")
    assert short.exit_code == 2 and "password" in short.stderr
    for result in (duplicate, bad_role, short):
        assert "Traceback" not in result.output


def test_api_keys_create_prints_the_key_once(cli: Any, tmp_path: Path) -> None:
    result = cli("api-keys", "create", "ci", "--role", "trainer")
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("alk_") and "shown once" in result.stderr
    found = stored(tmp_path, lambda store: store.get_api_key(token_hash(key)))
    assert found.role.value == "trainer" and found.key_hash != key
    unknown = cli("api-keys", "create", "x", "--user", "ghost")
    assert unknown.exit_code == 2 and "user ghost not found" in unknown.stderr
    assert cli("users", "create", "u1", input="a long password\n").exit_code == 0
    escalate = cli("api-keys", "create", "x", "--user", "u1", "--role", "admin")
    assert escalate.exit_code == 2 and "cannot create a admin key" in escalate.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_serve_refuses_auth_off_on_a_non_loopback_address(cli: Any, host: str) -> None:
    result = cli("serve", "--host", host, AGENTLOOP_AUTH_ENABLED="false")
    assert result.exit_code == 2, result.output
    assert f"refusing to serve without authentication on {host}" in result.stderr
    assert "Traceback" not in result.output


def test_disable_a_user_and_revoke_a_key(cli: Any, tmp_path: Path) -> None:
    assert cli("users", "create", "bob", input="a long password\n").exit_code == 0
    disabled = cli("users", "disable", "bob")
    assert disabled.exit_code == 0 and "bob disabled" in disabled.stderr
    assert stored(tmp_path, lambda store: store.get_user_by_name("bob")).disabled
    assert cli("users", "disable", "bob", "--enable").exit_code == 0
    assert not stored(tmp_path, lambda store: store.get_user_by_name("bob")).disabled
    unknown = cli("users", "disable", "ghost")
    assert unknown.exit_code == 2 and "user ghost not found" in unknown.stderr

    created = json.loads(cli("api-keys", "create", "ci", "--json").stdout)
    assert cli("api-keys", "revoke", created["id"]).exit_code == 0
    assert stored(tmp_path, lambda store: store.get_api_key(token_hash(created["key"]))).revoked
    assert cli("api-keys", "revoke", "nope").exit_code == 2

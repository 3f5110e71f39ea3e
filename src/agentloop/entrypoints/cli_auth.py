"""`agentloop users` and `agentloop api-keys`: accounts and service keys, made on the server's database.

Secrets go to stdout alone (so `TOKEN=$(agentloop users create me --role admin --token)` works); what a
person should read goes to stderr. A generated password or key is shown once and never stored in clear.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import typer

from agentloop.adapters.storage.auth_repository import SqlAuthStore
from agentloop.application.auth import AuthService
from agentloop.domain.auth import LOCAL_ADMIN, Principal, parse_role
from agentloop.entrypoints.cli_render import echo_json, err, out
from agentloop.errors import NotFoundError, ValidationError

users_app = typer.Typer(no_args_is_help=True, help="User accounts (argon2-hashed passwords, roles).")
keys_app = typer.Typer(no_args_is_help=True, help="API keys for service clients (stored hashed).")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
RoleOption = Annotated[str, typer.Option("--role", help="admin, trainer or user.")]
GENERATED_PASSWORD_BYTES = 18


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="api-keys")


@asynccontextmanager
async def auth_service(ctx: typer.Context) -> AsyncIterator[AuthService]:
    from agentloop.entrypoints.cli import wiring  # cli imports this module to register its commands

    async with wiring(ctx).store_container() as container:
        yield container.auth


def read_password() -> tuple[str, bool]:
    """The password piped on stdin, or a generated one (True: show it, once)."""
    if not sys.stdin.isatty():
        piped = sys.stdin.readline().rstrip("\r\n")
        if piped:
            return piped, False
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES), True


async def _create_user(
    ctx: typer.Context, name: str, role: str, password: str, token: bool
) -> dict[str, Any]:
    async with auth_service(ctx) as auth:
        user = await auth.create_user(name, parse_role(role), password)
        result: dict[str, Any] = {"id": user.id, "username": user.username, "role": user.role.value}
        if token:
            pair = await auth.access_token_for(user)
            result.update(
                access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
            )
        return result


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user name.")],
    role: RoleOption = "user",
    token: Annotated[
        bool, typer.Option("--token", help="Also print a ready access token (valid 30 minutes).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a user. The password is read from stdin, or generated and printed once."""
    password, generated = read_password()
    created = asyncio.run(_create_user(ctx, name, role, password, token))
    if generated:
        created["password"] = password
    if as_json:
        echo_json(created)
        return
    err().print(f"created user {created['username']} ({created['role']})", markup=False)
    if generated:
        err().print(f"password (shown once): {password}", markup=False, soft_wrap=True)
    if token:
        err().print(f"access token, valid {created['expires_in'] // 60} minutes:", markup=False)
        out().print(created["access_token"], markup=False, soft_wrap=True)


async def _list_users(ctx: typer.Context) -> list[dict[str, Any]]:
    async with auth_service(ctx) as auth:
        store = auth.store
        assert isinstance(store, SqlAuthStore)
        return [
            {"id": u.id, "username": u.username, "role": u.role.value, "created_at": u.created_at}
            for u in await store.list_users()
        ]


@users_app.command("ls")
def users_ls(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the users and their roles."""
    users = asyncio.run(_list_users(ctx))
    if as_json:
        echo_json(users)
        return
    for user in users:
        out().print(f"{user['username']}\t{user['role']}\t{user['id']}", markup=False)


async def _create_key(ctx: typer.Context, name: str, role: str, user: str | None) -> dict[str, Any]:
    async with auth_service(ctx) as auth:
        owner: Principal = LOCAL_ADMIN
        if user is not None:
            found = await auth.store.get_user_by_name(user)
            if found is None:
                raise NotFoundError("user", user)
            owner = found.principal
        key, plain = await auth.create_api_key(name, parse_role(role), owner)
        return {"id": key.id, "name": key.name, "role": key.role.value, "user": owner.username, "key": plain}


@keys_app.command("create")
def api_keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="What the key is for.")],
    role: RoleOption = "user",
    user: Annotated[
        str | None,
        typer.Option("--user", help="Act for this user (owns its conversations; role at most theirs)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; it is printed once (use it as `Authorization: Bearer <key>`)."""
    if not name.strip():
        raise ValidationError("an API key needs a name", field="name")
    created = asyncio.run(_create_key(ctx, name, role, user))
    if as_json:
        echo_json(created)
        return
    err().print(
        f"created {created['role']} API key {created['name']!r}, id {created['id']} (shown once):",
        markup=False,
    )
    out().print(created["key"], markup=False, soft_wrap=True)


async def _store(ctx: typer.Context, action: Any) -> None:
    async with auth_service(ctx) as auth:
        store = auth.store
        assert isinstance(store, SqlAuthStore)
        await action(store)


@users_app.command("disable")
def users_disable(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user name.")],
    enable: Annotated[bool, typer.Option("--enable", help="Re-enable instead.")] = False,
) -> None:
    """Disable a user: logins and every token already issued to them stop working."""
    asyncio.run(_store(ctx, lambda store: store.set_disabled(name, not enable)))
    err().print(f"user {name} {'enabled' if enable else 'disabled'}", markup=False)


@keys_app.command("revoke")
def api_keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (from `create --json`).")],
) -> None:
    """Revoke an API key at once."""
    asyncio.run(_store(ctx, lambda store: store.revoke_api_key(key_id)))
    err().print(f"API key {key_id} revoked", markup=False)

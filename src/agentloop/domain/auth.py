"""Who is asking and what they may do: users, roles, API keys and refresh-token sessions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from agentloop.domain.model import new_id, utcnow
from agentloop.errors import ValidationError

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024


class Role(StrEnum):
    """admin: everything; trainer: training, evaluation and models; user: own conversations and feedback.
    Each role includes the ones below it."""

    USER = "user"
    TRAINER = "trainer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return ROLE_ORDER.index(self)

    def includes(self, required: Role) -> bool:
        return self.rank >= required.rank


ROLE_ORDER: tuple[Role, ...] = (Role.USER, Role.TRAINER, Role.ADMIN)


def parse_role(value: str) -> Role:
    """The role named `value`; ValidationError naming the known roles otherwise."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        known = ", ".join(role.value for role in ROLE_ORDER)
        raise ValidationError(f"unknown role {value!r}; known roles: {known}", field="role") from None


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    user_id: str
    username: str
    role: Role

    def has(self, required: Role) -> bool:
        return self.role.includes(required)

    def owns(self, owner_id: str | None) -> bool:
        """May see a resource owned by `owner_id`: its owner, or an admin (who sees unowned ones too)."""
        return self.role is Role.ADMIN or (owner_id is not None and owner_id == self.user_id)

    @property
    def owner_filter(self) -> str | None:
        """The owner a listing is restricted to; None (no restriction) for admins."""
        return None if self.role is Role.ADMIN else self.user_id


# What the CLI and a server with auth switched off (loopback only) act as.
LOCAL_ADMIN = Principal(user_id="local", username="local", role=Role.ADMIN)


def check_username(name: str) -> str:
    if not USERNAME.match(name):
        raise ValidationError(
            "a user name is 1-64 characters: letters, digits and _ . @ -, starting with a letter or digit",
            field="username",
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ValidationError(
            f"a password needs {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters", field="password"
        )
    return password


@dataclass
class User:
    username: str
    role: Role
    password_hash: str
    id: str = field(default_factory=new_id)
    disabled: bool = False
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        check_username(self.username)

    @property
    def principal(self) -> Principal:
        return Principal(self.id, self.username, self.role)


@dataclass
class ApiKey:
    """A long-lived key for service clients; only its hash is stored."""

    name: str
    role: Role
    key_hash: str
    user_id: str
    id: str = field(default_factory=new_id)
    revoked: bool = False
    created_at: datetime = field(default_factory=utcnow)

    @property
    def principal(self) -> Principal:
        return Principal(self.user_id, f"key:{self.name}", self.role)


@dataclass
class RefreshSession:
    """One issued refresh token (stored by hash). Rotation marks it used and issues the next one in the same
    family; presenting a used token again means it leaked, so the whole family is revoked."""

    user_id: str
    family_id: str
    token_hash: str
    expires_at: datetime
    used: bool = False
    revoked: bool = False
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at

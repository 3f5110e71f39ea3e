"""SqlAuthStore: users, API keys and refresh-token sessions (the AuthStore port) in SQLite or PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agentloop.adapters.storage.orm import ApiKeyRow, AuthStateRow, RefreshTokenRow, UserRow
from agentloop.adapters.storage.repository import SessionStore
from agentloop.domain.auth import ApiKey, RefreshSession, Role, User
from agentloop.errors import ConflictError, NotFoundError


class SqlAuthStore(SessionStore):
    async def add_user(self, user: User) -> None:
        async with self._session() as session:
            session.add(
                UserRow(
                    id=user.id,
                    username=user.username,
                    role=user.role.value,
                    password_hash=user.password_hash,
                    disabled=user.disabled,
                    created_at=user.created_at,
                )
            )
            try:
                await session.commit()
            except IntegrityError as exc:
                raise ConflictError(f"user {user.username!r} already exists") from exc

    async def get_user(self, user_id: str) -> User | None:
        async with self._session() as session:
            row = await session.get(UserRow, user_id)
            return None if row is None else _user(row)

    async def get_user_by_name(self, username: str) -> User | None:
        async with self._session() as session:
            row = await session.scalar(select(UserRow).where(UserRow.username == username))
            return None if row is None else _user(row)

    async def list_users(self) -> list[User]:
        async with self._session() as session:
            return [_user(row) for row in await session.scalars(select(UserRow).order_by(UserRow.username))]

    async def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable (or re-enable) a user: a disabled user can neither log in nor use issued tokens."""
        async with self._session() as session:
            changed = await session.scalar(
                update(UserRow)
                .where(UserRow.username == username)
                .values(disabled=disabled)
                .returning(UserRow.id)
                .execution_options(synchronize_session=False)
            )
            if changed is None:
                raise NotFoundError("user", username)
            await _count_revocation(session)
            await session.commit()

    async def revoke_api_key(self, key_id: str) -> None:
        async with self._session() as session:
            changed = await session.scalar(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id)
                .values(revoked=True)
                .returning(ApiKeyRow.id)
                .execution_options(synchronize_session=False)
            )
            if changed is None:
                raise NotFoundError("API key", key_id)
            await _count_revocation(session)
            await session.commit()

    async def add_api_key(self, key: ApiKey) -> None:
        async with self._session() as session:
            session.add(
                ApiKeyRow(
                    id=key.id,
                    name=key.name,
                    role=key.role.value,
                    key_hash=key.key_hash,
                    user_id=key.user_id,
                    revoked=key.revoked,
                    created_at=key.created_at,
                )
            )
            await session.commit()

    async def get_api_key(self, key_hash: str) -> ApiKey | None:
        async with self._session() as session:
            row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
            if row is None:
                return None
            return ApiKey(
                id=row.id,
                name=row.name,
                role=Role(row.role),
                key_hash=row.key_hash,
                user_id=row.user_id,
                revoked=row.revoked,
                created_at=row.created_at,
            )

    async def add_session(self, refresh: RefreshSession) -> None:
        async with self._session() as session:
            session.add(
                RefreshTokenRow(
                    id=refresh.id,
                    user_id=refresh.user_id,
                    family_id=refresh.family_id,
                    token_hash=refresh.token_hash,
                    used=refresh.used,
                    revoked=refresh.revoked,
                    expires_at=refresh.expires_at,
                    created_at=refresh.created_at,
                )
            )
            await session.commit()

    async def get_session(self, token_hash: str) -> RefreshSession | None:
        async with self._session() as session:
            row = await session.scalar(
                select(RefreshTokenRow).where(RefreshTokenRow.token_hash == token_hash)
            )
            if row is None:
                return None
            return RefreshSession(
                id=row.id,
                user_id=row.user_id,
                family_id=row.family_id,
                token_hash=row.token_hash,
                used=row.used,
                revoked=row.revoked,
                expires_at=row.expires_at,
                created_at=row.created_at,
            )

    async def use_session(self, session_id: str) -> bool:
        # A conditional UPDATE: of two concurrent rotations of one token, exactly one sees a row change.
        async with self._session() as session:
            used = await session.scalar(
                update(RefreshTokenRow)
                .where(RefreshTokenRow.id == session_id, RefreshTokenRow.used.is_(False))
                .values(used=True)
                .returning(RefreshTokenRow.id)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
            return used is not None

    async def revoke_family(self, family_id: str) -> None:
        async with self._session() as session:
            await session.execute(
                update(RefreshTokenRow)
                .where(RefreshTokenRow.family_id == family_id)
                .values(revoked=True)
                .execution_options(synchronize_session=False)
            )
            await _count_revocation(session)
            await session.commit()

    async def family_revoked(self, family_id: str) -> bool:
        async with self._session() as session:
            hit = await session.scalar(
                select(RefreshTokenRow.id)
                .where(RefreshTokenRow.family_id == family_id, RefreshTokenRow.revoked.is_(True))
                .limit(1)
            )
            return hit is not None

    async def revocations(self) -> int:
        """How many revocations were ever committed (the counter `_count_revocation` bumps)."""
        async with self._reading() as connection:
            return await connection.scalar(_REVOCATIONS) or 0


_REVOCATIONS = select(AuthStateRow.revocations).where(AuthStateRow.id == 1)


async def _count_revocation(session: AsyncSession) -> None:
    """Bump the revocation counter in the transaction that revokes: whoever reads the new value also sees
    the revocation (servers re-verify credentials they cached before it)."""
    bumped = await session.scalar(
        update(AuthStateRow)
        .where(AuthStateRow.id == 1)
        .values(revocations=AuthStateRow.revocations + 1)
        .returning(AuthStateRow.id)
        .execution_options(synchronize_session=False)
    )
    if bumped is None:  # a database whose row was removed by hand: start counting again
        session.add(AuthStateRow(id=1, revocations=1))


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        username=row.username,
        role=Role(row.role),
        password_hash=row.password_hash,
        disabled=row.disabled,
        created_at=row.created_at,
    )

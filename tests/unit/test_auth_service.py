"""The auth service's rules with fakes: logins, rotation, reuse detection, logout, API keys, roles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentloop.application.auth import (
    API_KEY_PREFIX,
    BAD_CREDENTIALS,
    AuthConfig,
    AuthService,
    token_hash,
)
from agentloop.domain.auth import (
    LOCAL_ADMIN,
    ROLE_ORDER,
    Principal,
    RefreshSession,
    Role,
    User,
    check_password,
    check_username,
    parse_role,
)
from agentloop.errors import AuthenticationError, ConflictError, ValidationError
from fakes import FakeAuthStore, FakeCodec, FakeHasher

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PASSWORD = "correct horse"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> FakeAuthStore:
    return FakeAuthStore()


@pytest.fixture(params=[False, True], ids=["verified-every-time", "cached"])
def auth(store: FakeAuthStore, clock: Clock, request: pytest.FixtureRequest) -> AuthService:
    """Every rule holds alike with the credential cache off and on (revocations seen at once either way)."""
    config = AuthConfig(access_ttl_s=1800, refresh_ttl_s=86400, cache_credentials=request.param)
    return AuthService(store, FakeHasher(), FakeCodec(), config, clock)


async def alice(auth: AuthService, role: Role = Role.USER) -> User:
    return await auth.create_user("alice", role, PASSWORD)


# --- domain -------------------------------------------------------------------------------------------------


def test_roles_include_the_ones_below() -> None:
    assert Role.ADMIN.includes(Role.TRAINER) and Role.ADMIN.includes(Role.USER)
    assert Role.TRAINER.includes(Role.USER) and not Role.TRAINER.includes(Role.ADMIN)
    assert not Role.USER.includes(Role.TRAINER)
    assert [role.rank for role in ROLE_ORDER] == [0, 1, 2]


def test_parse_role() -> None:
    assert parse_role(" Trainer ") is Role.TRAINER
    with pytest.raises(ValidationError, match="known roles: user, trainer, admin"):
        parse_role("root")


def test_ownership() -> None:
    bob = Principal("u-bob", "bob", Role.USER)
    assert bob.owns("u-bob") and not bob.owns("u-eve") and not bob.owns(None)
    assert LOCAL_ADMIN.owns("u-bob") and LOCAL_ADMIN.owns(None)
    assert bob.owner_filter == "u-bob" and LOCAL_ADMIN.owner_filter is None
    trainer = Principal("u-t", "t", Role.TRAINER)
    assert trainer.has(Role.TRAINER) and not trainer.owns("u-bob")


@pytest.mark.parametrize("name", ["", "a b", "../x", "-lead", "x" * 65, "名前"])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(ValidationError):
        check_username(name)


@given(st.text(max_size=80))
def test_username_check_never_crashes(name: str) -> None:
    try:
        assert check_username(name) == name
    except ValidationError as exc:
        assert exc.field == "username"


def test_password_length() -> None:
    with pytest.raises(ValidationError, match="8 to 1024"):
        check_password("short")
    assert check_password("long enough")


def test_refresh_session_expiry() -> None:
    session = RefreshSession("u", "f", "h", NOW)
    assert session.expired(NOW) and not session.expired(NOW - timedelta(seconds=1))


# --- users and logins ---------------------------------------------------------------------------------------


async def test_login_issues_an_access_and_a_refresh_token(auth: AuthService, store: FakeAuthStore) -> None:
    user = await alice(auth)
    pair = await auth.login("alice", PASSWORD)
    assert pair.token_type == "bearer" and pair.expires_in == 1800
    claims = FakeCodec().decode(pair.access_token)
    assert claims["sub"] == user.id and claims["role"] == "user" and claims["typ"] == "access"
    assert claims["exp"] - claims["iat"] == 1800
    assert claims["iss"] == "agentloop" and claims["aud"] == "agentloop-api"
    # Only the hash of the refresh token is stored.
    assert pair.refresh_token not in str(store.sessions) and token_hash(pair.refresh_token) in store.sessions
    assert await auth.authenticate(pair.access_token) == Principal(user.id, "alice", Role.USER)


async def test_passwords_are_stored_hashed(auth: AuthService, store: FakeAuthStore) -> None:
    user = await alice(auth)
    assert store.users[user.id].password_hash != PASSWORD


async def test_duplicate_user_is_a_conflict(auth: AuthService) -> None:
    await alice(auth)
    with pytest.raises(ConflictError, match="already exists"):
        await auth.create_user("alice", "admin", PASSWORD)


async def test_create_user_checks_its_input(auth: AuthService) -> None:
    with pytest.raises(ValidationError, match="role"):
        await auth.create_user("bob", "root", PASSWORD)
    with pytest.raises(ValidationError, match="password"):
        await auth.create_user("bob", "user", "short")


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong password"), ("nobody", PASSWORD)])
async def test_bad_credentials_fail_alike(auth: AuthService, username: str, password: str) -> None:
    await alice(auth)
    with pytest.raises(AuthenticationError) as caught:
        await auth.login(username, password)
    assert str(caught.value) == BAD_CREDENTIALS


async def test_a_disabled_user_cannot_log_in_or_use_tokens(auth: AuthService, store: FakeAuthStore) -> None:
    user = await alice(auth)
    pair = await auth.login("alice", PASSWORD)
    store.users[user.id].disabled = True
    with pytest.raises(AuthenticationError):
        await auth.login("alice", PASSWORD)
    with pytest.raises(AuthenticationError, match="unknown user"):
        await auth.authenticate(pair.access_token)
    with pytest.raises(AuthenticationError, match="no longer exists"):
        await auth.refresh(pair.refresh_token)


async def test_a_token_that_is_not_an_access_token_is_refused(auth: AuthService) -> None:
    await alice(auth)
    pair = await auth.login("alice", PASSWORD)
    claims = FakeCodec().decode(pair.access_token)
    for changed in ({"typ": "refresh"}, {"fam": ""}):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(FakeCodec().encode({**claims, **changed}))
    with pytest.raises(AuthenticationError):
        await auth.authenticate(pair.refresh_token)


# --- refresh rotation ---------------------------------------------------------------------------------------


async def test_refresh_rotates_and_reuse_revokes_the_family(auth: AuthService) -> None:
    await alice(auth)
    first = await auth.login("alice", PASSWORD)
    second = await auth.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    await auth.authenticate(second.access_token)
    with pytest.raises(AuthenticationError, match="reuse detected"):
        await auth.refresh(first.refresh_token)
    # The thief's and the owner's tokens of that login are all dead now.
    with pytest.raises(AuthenticationError, match="revoked"):
        await auth.refresh(second.refresh_token)
    for access in (first.access_token, second.access_token):
        with pytest.raises(AuthenticationError, match="revoked"):
            await auth.authenticate(access)


async def test_reuse_revokes_only_its_own_family(auth: AuthService) -> None:
    await alice(auth)
    laptop = await auth.login("alice", PASSWORD)
    phone = await auth.login("alice", PASSWORD)
    await auth.refresh(laptop.refresh_token)
    with pytest.raises(AuthenticationError):
        await auth.refresh(laptop.refresh_token)
    assert (await auth.authenticate(phone.access_token)).username == "alice"
    await auth.refresh(phone.refresh_token)


async def test_losing_a_rotation_race_counts_as_reuse(auth: AuthService, store: FakeAuthStore) -> None:
    await alice(auth)
    pair = await auth.login("alice", PASSWORD)
    store.lose_rotation_race = True
    with pytest.raises(AuthenticationError, match="reuse"):
        await auth.refresh(pair.refresh_token)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(pair.access_token)


async def test_expired_or_unknown_refresh_tokens_fail(auth: AuthService, clock: Clock) -> None:
    await alice(auth)
    pair = await auth.login("alice", PASSWORD)
    with pytest.raises(AuthenticationError, match="invalid refresh token"):
        await auth.refresh("alr_not-a-token")
    clock.now = NOW + timedelta(hours=24)
    with pytest.raises(AuthenticationError, match="expired"):
        await auth.refresh(pair.refresh_token)


async def test_logout_revokes_the_login(auth: AuthService) -> None:
    await alice(auth)
    pair = await auth.login("alice", PASSWORD)
    await auth.logout(pair.refresh_token)
    with pytest.raises(AuthenticationError, match="revoked"):
        await auth.authenticate(pair.access_token)
    with pytest.raises(AuthenticationError, match="revoked"):
        await auth.refresh(pair.refresh_token)
    with pytest.raises(AuthenticationError, match="invalid refresh token"):
        await auth.logout("alr_unknown")


async def test_access_token_for_a_user_without_password(auth: AuthService) -> None:
    user = await alice(auth, Role.ADMIN)
    pair = await auth.access_token_for(user)
    assert (await auth.authenticate(pair.access_token)).role is Role.ADMIN


# --- API keys -----------------------------------------------------------------------------------------------


async def test_api_keys_authenticate_and_are_stored_hashed(auth: AuthService, store: FakeAuthStore) -> None:
    key, plain = await auth.create_api_key("ci bot", "trainer", LOCAL_ADMIN)
    assert plain.startswith(API_KEY_PREFIX) and plain not in str(store.keys)
    principal = await auth.authenticate(plain)
    assert principal == Principal("local", "key:ci bot", Role.TRAINER)
    store.keys[key.key_hash].revoked = True
    with pytest.raises(AuthenticationError, match="invalid API key"):
        await auth.authenticate(plain)
    with pytest.raises(AuthenticationError, match="invalid API key"):
        await auth.authenticate(API_KEY_PREFIX + "guessed")


async def test_an_api_key_never_outranks_its_owner(auth: AuthService) -> None:
    user = await alice(auth)
    with pytest.raises(ValidationError, match="cannot create a admin key"):
        await auth.create_api_key("escalate", Role.ADMIN, user.principal)
    key, plain = await auth.create_api_key("mine", Role.USER, user.principal)
    assert (await auth.authenticate(plain)).user_id == user.id == key.user_id
    with pytest.raises(ValidationError, match="name"):
        await auth.create_api_key("  ", Role.USER, user.principal)


async def test_a_disabled_owners_api_keys_stop_working(auth: AuthService, store: FakeAuthStore) -> None:
    user = await alice(auth, Role.TRAINER)
    _, plain = await auth.create_api_key("alice's bot", "user", user.principal)
    assert (await auth.authenticate(plain)).user_id == user.id
    store.users[user.id].disabled = True
    with pytest.raises(AuthenticationError, match="invalid API key"):
        await auth.authenticate(plain)
    store.users[user.id].disabled = False
    assert (await auth.authenticate(plain)).user_id == user.id


# --- the credential cache -----------------------------------------------------------------------------------


def cached_auth(store: FakeAuthStore, clock: Clock) -> AuthService:
    config = AuthConfig(access_ttl_s=1800, refresh_ttl_s=86400, cache_credentials=True)
    return AuthService(store, FakeHasher(), FakeCodec(), config, clock)


async def test_a_cached_key_is_not_looked_up_again_until_a_revocation(
    store: FakeAuthStore, clock: Clock
) -> None:
    auth = cached_auth(store, clock)
    key, plain = await auth.create_api_key("bot", "user", LOCAL_ADMIN)
    other, _ = await auth.create_api_key("other", "user", LOCAL_ADMIN)
    for _ in range(3):
        assert (await auth.authenticate(plain)).username == "key:bot"
    assert store.key_reads == 1 and store.revocation_reads == 3
    # Any revocation (here another key's) makes every entry verified before it count for nothing.
    store.keys[other.key_hash].revoked = True
    await auth.authenticate(plain)
    assert store.key_reads == 2
    store.keys[key.key_hash].revoked = True
    with pytest.raises(AuthenticationError, match="invalid API key"):
        await auth.authenticate(plain)


async def test_a_cached_access_token_expires_with_the_token(store: FakeAuthStore, clock: Clock) -> None:
    auth = cached_auth(store, clock)
    await alice(auth)
    pair = await auth.login("alice", PASSWORD)
    assert auth.cache is not None
    await auth.authenticate(pair.access_token)
    entry_clock = [0.0]
    auth.cache.clock = lambda: entry_clock[0]
    digest = token_hash(pair.access_token)
    for max_age, lasts in ((10_000.0, 1800.0), (300.0, 300.0)):  # the token's remaining life, or the cap
        auth.cache.max_age_s = max_age
        auth.cache.clear()
        entry_clock[0] = 0.0
        await auth.authenticate(pair.access_token)
        entry_clock[0] = lasts - 1
        assert auth.cache.get(digest, await store.revocations()) is not None
        entry_clock[0] = lasts
        assert auth.cache.get(digest, await store.revocations()) is None


async def test_failures_are_not_cached(store: FakeAuthStore, clock: Clock) -> None:
    auth = cached_auth(store, clock)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(API_KEY_PREFIX + "guessed")
    assert store.key_reads == 2 and auth.cache is not None and len(auth.cache) == 0

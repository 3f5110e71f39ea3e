"""Hand-written fakes for the ports, wired through the real bootstrap in tests."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from agentloop.application.ports import Completion, GenerationRequest, Token
from agentloop.domain.auth import ApiKey, RefreshSession, User
from agentloop.domain.events import Event
from agentloop.domain.model import Agent, Conversation, Message, Usage
from agentloop.errors import AuthenticationError, NotFoundError


class FakeEngine:
    """An InferenceEngine that replays scripted replies, a few characters per token.

    A scripted exception is raised instead of a reply. Honours `max_tokens` (finish "length") and `stop`
    (finish "stop") like the real engine; records every request, and counts streams abandoned mid-way.
    """

    def __init__(
        self,
        replies: Iterable[str | Exception] = (),
        *,
        model_version: str = "fake-1",
        context_size: int = 4096,
        chars_per_token: int = 4,
        delay_s: float = 0.0,
    ) -> None:
        self.replies = deque(replies)
        self._version = model_version
        self._context = context_size
        self.chars_per_token = chars_per_token
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []
        self.abandoned = 0

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def context_size(self) -> int:
        return self._context

    async def count_tokens(self, text: str) -> int:
        return len(text) // 4

    def script(self, *replies: str | Exception) -> None:
        self.replies.extend(replies)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Token | Completion]:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError("FakeEngine has no scripted reply left")
        reply = self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        text, finish = self._cut(reply, request)
        pieces = [text[i : i + self.chars_per_token] for i in range(0, len(text), self.chars_per_token)]
        finished = False
        try:
            for piece in pieces:
                await asyncio.sleep(self.delay_s)
                yield Token(piece)
            usage = Usage(await self.count_tokens(request.prompt), len(pieces))
            finished = True
            yield Completion(text, usage, finish, self._version)
        finally:
            if not finished:
                self.abandoned += 1

    def _cut(self, text: str, request: GenerationRequest) -> tuple[str, str]:
        for stop in request.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        limit = request.max_tokens * self.chars_per_token
        if len(text) > limit:
            return text[:limit], "length"
        return text, "stop"


class FakeStore:
    """An in-memory ConversationStore."""

    def __init__(self, agents: Iterable[Agent] = ()) -> None:
        self.agents = {agent.id: agent for agent in agents}
        self.conversations: dict[str, Conversation] = {}
        self.events: list[Event] = []
        self.commits = 0

    async def get_agent(self, agent_id: str) -> Agent:
        if agent_id not in self.agents:
            raise NotFoundError("agent", agent_id)
        return self.agents[agent_id]

    async def get_conversation(self, conversation_id: str) -> Conversation:
        if conversation_id not in self.conversations:
            raise NotFoundError("conversation", conversation_id)
        stored = self.conversations[conversation_id]
        return dataclasses.replace(stored, messages=list(stored.messages))

    async def create_conversation(self, conversation: Conversation) -> None:
        self.conversations[conversation.id] = dataclasses.replace(
            conversation, messages=list(conversation.messages)
        )

    async def append(
        self, conversation_id: str, messages: Sequence[Message], events: Sequence[Event] = ()
    ) -> None:
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            raise NotFoundError("conversation", conversation_id)
        conversation.messages.extend(messages)
        self.events.extend(events)
        self.commits += 1


class FakeHasher:
    """A PasswordHasher that is instant (and obviously not secure): tests of the auth service's logic."""

    def hash(self, password: str) -> str:
        return "fake$" + password[::-1]

    def verify(self, password_hash: str, password: str) -> bool:
        return password_hash == self.hash(password)


class FakeCodec:
    """A TokenCodec that 'signs' by wrapping the claims in JSON with a marker; refuses anything else."""

    def encode(self, claims: dict[str, Any]) -> str:
        return "signed." + json.dumps(claims, sort_keys=True)

    def decode(self, token: str) -> dict[str, Any]:
        if not token.startswith("signed."):
            raise AuthenticationError("token signature is invalid")
        claims: dict[str, Any] = json.loads(token.removeprefix("signed."))
        return claims


class FakeAuthStore:
    """The AuthStore port in dictionaries; `lose_rotation_race` makes the next use_session lose."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.keys: dict[str, ApiKey] = {}
        self.sessions: dict[str, RefreshSession] = {}
        self.lose_rotation_race = False
        self.revocation_reads = 0
        self.key_reads = 0

    async def add_user(self, user: User) -> None:
        self.users[user.id] = dataclasses.replace(user)

    async def get_user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    async def get_user_by_name(self, username: str) -> User | None:
        return next((u for u in self.users.values() if u.username == username), None)

    async def add_api_key(self, key: ApiKey) -> None:
        self.keys[key.key_hash] = dataclasses.replace(key)

    async def get_api_key(self, key_hash: str) -> ApiKey | None:
        self.key_reads += 1
        return self.keys.get(key_hash)

    async def add_session(self, session: RefreshSession) -> None:
        self.sessions[session.token_hash] = dataclasses.replace(session)

    async def get_session(self, token_hash: str) -> RefreshSession | None:
        found = self.sessions.get(token_hash)
        return None if found is None else dataclasses.replace(found)

    async def use_session(self, session_id: str) -> bool:
        session = next(s for s in self.sessions.values() if s.id == session_id)
        if self.lose_rotation_race:
            self.lose_rotation_race = False
            session.used = True
            return False
        if session.used:
            return False
        session.used = True
        return True

    async def revoke_family(self, family_id: str) -> None:
        for session in self.sessions.values():
            if session.family_id == family_id:
                session.revoked = True

    async def family_revoked(self, family_id: str) -> bool:
        return any(s.revoked for s in self.sessions.values() if s.family_id == family_id)

    async def revocations(self) -> int:
        """Changes whenever anything is revoked or disabled, however the test changed it (the SQL store
        bumps a counter in each revoking transaction)."""
        self.revocation_reads += 1
        return hash(
            (
                frozenset(k for k, key in self.keys.items() if key.revoked),
                frozenset(u for u, user in self.users.items() if user.disabled),
                frozenset(s.id for s in self.sessions.values() if s.revoked),
            )
        )

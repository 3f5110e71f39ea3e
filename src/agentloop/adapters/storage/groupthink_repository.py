"""GroupThink labels in the existing tables (no migration): a labeled turn is a conversation with source
"groupthink" and its vote is a ConsensusReached row in the events table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import selectinload

from agentloop.adapters.storage.orm import ConversationRow, EventRow, FeedbackRow, MessageRow
from agentloop.adapters.storage.repository import SessionStore, _conversation, _message
from agentloop.application.learning.labeling import PracticePrompt
from agentloop.domain.events import ConsensusReached, Event
from agentloop.domain.model import Conversation, Role

CONSENSUS = "ConsensusReached"
# Conversations that are not users' traffic: their prompts are never re-labeled.
NOT_TRAFFIC = ("groupthink", "eval")

__all__ = ["SqlGroupThinkStore"]


class SqlGroupThinkStore(SessionStore):
    async def consensus_events(self) -> list[ConsensusReached]:
        """Every GroupThink vote, oldest first."""
        query = select(EventRow).where(EventRow.name == CONSENSUS).order_by(EventRow.occurred_at)
        async with self._session() as session:
            rows = await session.scalars(query)
            return [ConsensusReached(id=row.id, occurred_at=row.occurred_at, **row.payload) for row in rows]

    async def add_events(self, events: Sequence[Event]) -> None:
        """Record events (votes) in the events table: the same group-committed write as other lone events."""
        await self._event_writes.submit(events)

    async def labeled_conversations(
        self, limit: int, since: datetime | None = None
    ) -> list[tuple[Conversation, dict[str, float]]]:
        """The newest `limit` labeled conversations (voted at or after `since`) with their agreement per final
        message id."""
        votes = [
            v
            for v in await self.consensus_events()
            if v.labeled and v.conversation_id and (since is None or v.occurred_at >= since)
        ]
        agreement: dict[str, dict[str, float]] = {}
        for v in votes[::-1][: max(limit, 0)]:
            assert v.conversation_id is not None and v.message_id is not None
            agreement.setdefault(v.conversation_id, {})[v.message_id] = v.agreement
        async with self._session() as session:
            rows = await session.scalars(
                select(ConversationRow)
                .where(ConversationRow.id.in_(list(agreement)))
                .options(selectinload(ConversationRow.messages))
            )
            found = {row.id: _conversation(row, [_message(m) for m in row.messages]) for row in rows}
        return [(found[i], agreement[i]) for i in agreement if i in found]

    async def unrated_prompts(self, limit: int) -> list[PracticePrompt]:
        """First user messages of users' conversations that got no feedback, newest first."""
        rated = exists().where(FeedbackRow.conversation_id == ConversationRow.id)
        query = (
            select(MessageRow.content, ConversationRow.agent_id)
            .join(ConversationRow, MessageRow.conversation_id == ConversationRow.id)
            .where(
                MessageRow.role == Role.USER.value,
                MessageRow.seq == 1,
                ConversationRow.source.not_in(NOT_TRAFFIC),
                ~rated,
            )
            .order_by(ConversationRow.updated_at.desc())
            .limit(max(limit, 0))
        )
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return [PracticePrompt(content, (), "stored", agent_id) for content, agent_id in rows]

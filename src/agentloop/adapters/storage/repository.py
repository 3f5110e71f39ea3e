"""SqlStore: the ConversationStore port and the plain CRUD the API needs, on SQLAlchemy async sessions."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Integer, Select, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from agentloop.adapters.storage.group_commit import GroupCommit
from agentloop.adapters.storage.orm import AgentRow, ConversationRow, EventRow, MessageRow
from agentloop.adapters.storage.sqlite_writer import SyncWrite, writer_of
from agentloop.domain.events import Event
from agentloop.domain.model import (
    Agent,
    Conversation,
    Message,
    ModelConfig,
    Role,
    ToolCall,
    ToolResult,
    Usage,
    utcnow,
)
from agentloop.errors import NotFoundError, StorageError, ValidationError

T = TypeVar("T")


@contextmanager
def _database_errors() -> Iterator[None]:
    """Driver and connection errors surface as StorageError (naming only the error's type)."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"database error: {type(exc).__name__}") from exc


class SessionStore:
    """Base of the SQL stores: sessions whose driver errors surface as StorageError."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        # Told about every domain event once it is committed (bootstrap points it at the metrics).
        self.on_events: Callable[[Sequence[Event]], None] = _ignore_events
        # Events recorded on their own: concurrent callers share transactions (group_commit.py).
        self._event_writes: GroupCommit[Sequence[Event]] = GroupCommit(
            partial(self._write_transaction, _insert_event_lists)
        )

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        with _database_errors():
            async with self._sessions() as session:
                yield session

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for Core reads, without an ORM session's bookkeeping (the hot reads: a list
        page, the revocation counter). Anything not committed is rolled back when the block ends."""
        engine: AsyncEngine = self._sessions.kw["bind"]
        with _database_errors():
            async with engine.connect() as connection:
                yield connection

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection in a transaction, committed when the block ends (rolled back on an error):
        for writes of Core statements, without an ORM session's bookkeeping around them."""
        engine: AsyncEngine = self._sessions.kw["bind"]
        with _database_errors():
            async with engine.begin() as connection:
                yield connection

    async def _write_transaction(self, write: SyncWrite[T], items: Sequence[T]) -> None:
        """`write(connection, items)` in one transaction: on a SQLite file all of it on the writer's thread,
        one hop (sqlite_writer.py); elsewhere through the async driver, a round trip per statement."""
        writer = writer_of(self._sessions.kw["bind"])
        if writer is None:
            async with self._transaction() as connection:
                await connection.run_sync(write, items)
            return
        with _database_errors():
            await writer.transaction(write, items)


class SqlStore(SessionStore):
    """Agents, conversations, messages and events in SQLite or PostgreSQL."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)
        self._appends: GroupCommit[_Append] = GroupCommit(partial(self._write_transaction, _append_all))

    async def create_agent(self, agent: Agent) -> None:
        """Insert an agent; ValidationError if its name is taken."""
        async with self._session() as session:
            if await _agent_name_taken(session, agent.name):
                raise _duplicate_name(agent.name)
            session.add(_agent_row(agent))
            try:
                await session.commit()
            except IntegrityError as exc:
                # Lost a race with another insert of the same name, or a duplicate id.
                await session.rollback()
                if await _agent_name_taken(session, agent.name):
                    raise _duplicate_name(agent.name) from exc
                raise

    async def get_agent(self, agent_id: str) -> Agent:
        """The agent with this id; NotFoundError if there is none."""
        async with self._session() as session:
            row = await session.get(AgentRow, agent_id)
            if row is None:
                raise NotFoundError("agent", agent_id)
            return _agent(row)

    async def get_agent_by_name(self, name: str) -> Agent | None:
        """The agent with this name, or None."""
        async with self._session() as session:
            row = await session.scalar(select(AgentRow).where(AgentRow.name == name))
            return None if row is None else _agent(row)

    async def list_agents(self) -> list[Agent]:
        """All agents, by name."""
        async with self._session() as session:
            rows = await session.scalars(select(AgentRow).order_by(AgentRow.name))
            return [_agent(row) for row in rows]

    async def create_conversation(self, conversation: Conversation) -> None:
        """Insert a conversation (and any messages it already holds); NotFoundError for an unknown agent."""
        async with self._session() as session:
            if await session.get(AgentRow, conversation.agent_id) is None:
                raise NotFoundError("agent", conversation.agent_id)
            row = _conversation_row(conversation)
            row.messages = [
                _message_row(message, conversation.id, seq)
                for seq, message in enumerate(conversation.messages, start=1)
            ]
            session.add(row)
            await session.commit()

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """The conversation with its messages in order; NotFoundError if there is none."""
        async with self._session() as session:
            row = await session.scalar(
                select(ConversationRow)
                .where(ConversationRow.id == conversation_id)
                .options(selectinload(ConversationRow.messages))
            )
            if row is None:
                raise NotFoundError("conversation", conversation_id)
            return _conversation(row, [_message(message) for message in row.messages])

    async def conversation_owner(self, conversation_id: str) -> str | None:
        """The owner of a conversation (None: unowned); NotFoundError if there is no such conversation."""
        async with self._session() as session:
            row = await session.execute(
                select(ConversationRow.owner_id).where(ConversationRow.id == conversation_id)
            )
            found = row.first()
            if found is None:
                raise NotFoundError("conversation", conversation_id)
            return found[0]

    async def list_conversations(
        self, limit: int, offset: int, agent_id: str | None = None, owner_id: str | None = None
    ) -> tuple[list[Conversation], int]:
        """One page of conversations without their messages, most recently updated first, and the total;
        only `owner_id`'s when given."""
        if limit < 0 or offset < 0:
            raise ValidationError(
                "limit and offset must not be negative", field="limit" if limit < 0 else "offset"
            )
        # One query for the page and the total (a window count over the filtered rows): a list is the most
        # frequent read, and every statement is a round trip to the database (a thread hop with aiosqlite).
        # Plain columns, not ORM objects: nothing here is changed or lazily loaded.
        # The statements are built once per filter combination, with bound parameters: building one per
        # call, and SQLAlchemy's cache key for it, cost more than running the query on SQLite.
        page, count = _CONVERSATION_PAGES[agent_id is not None, owner_id is not None]
        values = {"agent_id": agent_id, "owner_id": owner_id}
        async with self._reading() as connection:
            rows = (await connection.execute(page, {**values, "limit": limit, "offset": offset})).all()
            if rows:
                total = int(rows[0].total)
            elif offset == 0 and limit > 0:
                total = 0  # an empty first page: nothing matches
            else:
                # Past the end (or limit 0) the window saw no rows: count on their own.
                total = await connection.scalar(count, values) or 0
            return [_conversation(row, []) for row in rows], total

    async def delete_conversation(self, conversation_id: str) -> None:
        """Delete a conversation and (by cascade) its messages; NotFoundError if there is none."""
        async with self._session() as session:
            deleted = await session.scalar(
                delete(ConversationRow)
                .where(ConversationRow.id == conversation_id)
                .returning(ConversationRow.id)
                .execution_options(synchronize_session=False)
            )
            if deleted is None:
                raise NotFoundError("conversation", conversation_id)
            await session.commit()

    async def append(
        self, conversation_id: str, messages: Sequence[Message], events: Sequence[Event] = ()
    ) -> None:
        """Add messages after the last one and record events, in one transaction."""
        for message in messages:
            if message.conversation_id != conversation_id:
                raise ValidationError(
                    f"message {message.id} belongs to conversation {message.conversation_id}",
                    field="conversation_id",
                )
        # Concurrent appends (other turns) share a transaction and its commit (group_commit.py).
        await self._appends.submit((conversation_id, messages, events))
        self.on_events(events)

    async def get_message(self, message_id: str) -> Message:
        """One message; NotFoundError if there is none."""
        async with self._session() as session:
            row = await session.get(MessageRow, message_id)
            if row is None:
                raise NotFoundError("message", message_id)
            return _message(row)

    async def list_events(self, conversation_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest events, newest first, optionally of one conversation: name, payload, occurred_at."""
        query = select(EventRow).order_by(EventRow.occurred_at.desc()).limit(max(limit, 0))
        if conversation_id is not None:
            query = query.where(EventRow.conversation_id == conversation_id)
        async with self._session() as session:
            rows = await session.scalars(query)
            return [{"name": r.name, "payload": r.payload, "occurred_at": r.occurred_at} for r in rows]


async def _agent_name_taken(session: AsyncSession, name: str) -> bool:
    return await session.scalar(select(AgentRow.id).where(AgentRow.name == name)) is not None


def _duplicate_name(name: str) -> ValidationError:
    return ValidationError(f"agent name {name!r} already exists", field="name")


def _agent_row(agent: Agent) -> AgentRow:
    return AgentRow(
        id=agent.id,
        name=agent.name,
        system_prompt=agent.system_prompt,
        model_config=dataclasses.asdict(agent.model_config),
        allowed_tools=list(agent.allowed_tools),
        max_steps=agent.max_steps,
        created_at=agent.created_at,
    )


def _agent(row: AgentRow) -> Agent:
    return Agent(
        id=row.id,
        name=row.name,
        system_prompt=row.system_prompt,
        model_config=ModelConfig(**row.model_config),
        allowed_tools=tuple(row.allowed_tools),
        max_steps=row.max_steps,
        created_at=row.created_at,
    )


def _conversation_row(conversation: Conversation) -> ConversationRow:
    return ConversationRow(
        id=conversation.id,
        agent_id=conversation.agent_id,
        title=conversation.title,
        source=conversation.source,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
        owner_id=conversation.owner_id,
    )


def _conversation(row: Any, messages: list[Message]) -> Conversation:
    """A conversation from a ConversationRow, or from a Core row of `_CONVERSATION_COLUMNS` (same names)."""
    return Conversation(
        id=row.id,
        agent_id=row.agent_id,
        title=row.title,
        source=row.source,
        messages=messages,
        created_at=row.created_at,
        updated_at=row.updated_at,
        owner_id=row.owner_id,
    )


_CONVERSATION_COLUMNS = (
    ConversationRow.id,
    ConversationRow.agent_id,
    ConversationRow.title,
    ConversationRow.source,
    ConversationRow.created_at,
    ConversationRow.updated_at,
    ConversationRow.owner_id,
)


def _conversation_page(by_agent: bool, by_owner: bool) -> tuple[Select[*tuple[Any, ...]], Select[int]]:
    """A page of conversations (with the window count of all that match) and the count on its own, filtered
    by the `agent_id` and `owner_id` parameters when asked; `limit` and `offset` are parameters too."""
    page = select(*_CONVERSATION_COLUMNS, func.count().over().label("total"))
    count = select(func.count()).select_from(ConversationRow)
    if by_agent:
        page = page.where(ConversationRow.agent_id == bindparam("agent_id"))
        count = count.where(ConversationRow.agent_id == bindparam("agent_id"))
    if by_owner:
        page = page.where(ConversationRow.owner_id == bindparam("owner_id"))
        count = count.where(ConversationRow.owner_id == bindparam("owner_id"))
    page = page.order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
    return page.limit(bindparam("limit", type_=Integer)).offset(bindparam("offset", type_=Integer)), count


_CONVERSATION_PAGES = {(a, o): _conversation_page(a, o) for a in (False, True) for o in (False, True)}


_INSERT_MESSAGES = insert(cast(Table, MessageRow.__table__))


def _message_row(message: Message, conversation_id: str, seq: int) -> MessageRow:
    return MessageRow(**_message_values(message, conversation_id, seq))


def _message_values(message: Message, conversation_id: str, seq: int) -> dict[str, Any]:
    return {
        "id": message.id,
        "conversation_id": conversation_id,
        "seq": seq,
        "role": message.role.value,
        "content": message.content,
        "tool_call": None if message.tool_call is None else dataclasses.asdict(message.tool_call),
        "tool_result": None if message.tool_result is None else dataclasses.asdict(message.tool_result),
        "prompt_tokens": message.usage.prompt_tokens,
        "completion_tokens": message.usage.completion_tokens,
        "latency_ms": message.latency_ms,
        "model_version": message.model_version,
        "created_at": message.created_at,
    }


def _message(row: MessageRow) -> Message:
    return Message(
        id=row.id,
        conversation_id=row.conversation_id,
        role=Role(row.role),
        content=row.content,
        tool_call=None if row.tool_call is None else ToolCall(**row.tool_call),
        tool_result=None if row.tool_result is None else ToolResult(**row.tool_result),
        usage=Usage(row.prompt_tokens, row.completion_tokens),
        latency_ms=row.latency_ms,
        model_version=row.model_version,
        created_at=row.created_at,
    )


def _ignore_events(events: Sequence[Event]) -> None:
    return None


_Append = tuple[str, Sequence[Message], Sequence[Event]]


def _append_all(connection: Connection, appends: Sequence[_Append]) -> None:
    """Each append's messages after its conversation's last one, then every append's events in one INSERT.
    Conversations are locked in id order (a stable sort keeps one conversation's appends in order), so two
    servers' shared transactions on PostgreSQL cannot wait on each other's locks."""
    for conversation_id, messages, _ in sorted(appends, key=lambda append: append[0]):
        # Updating the conversation first locks it (its row on PostgreSQL, the write lock on SQLite),
        # so concurrent appends to one conversation read the max seq one after the other.
        touched = connection.scalar(
            update(ConversationRow)
            .where(ConversationRow.id == conversation_id)
            .values(updated_at=utcnow())
            .returning(ConversationRow.id)
        )
        if touched is None:
            raise NotFoundError("conversation", conversation_id)
        last = connection.scalar(
            select(func.max(MessageRow.seq)).where(MessageRow.conversation_id == conversation_id)
        )
        if messages:
            connection.execute(
                _INSERT_MESSAGES,
                [
                    _message_values(message, conversation_id, seq)
                    for seq, message in enumerate(messages, (last or 0) + 1)
                ],
            )
    _insert_event_lists(connection, [events for _, _, events in appends])


def _insert_event_lists(connection: Connection, lists: Sequence[Sequence[Event]]) -> None:
    events = [_event_values(event) for events in lists for event in events]
    if events:
        connection.execute(_INSERT_EVENTS, events)


# Core, not ORM objects: events are only ever inserted, and the unit of work around an ORM object (state
# tracking, flush ordering) cost more than the insert itself (bench/results/events.json).
_INSERT_EVENTS = insert(cast(Table, EventRow.__table__))


async def insert_events(into: AsyncSession | AsyncConnection, events: Sequence[Event]) -> None:
    """Add events to a session's or connection's transaction: one INSERT for all of them (executemany)."""
    if events:
        await into.execute(_INSERT_EVENTS, [_event_values(event) for event in events])


def _event_values(event: Event) -> dict[str, Any]:
    payload = event.payload()
    conversation_id = payload.get("conversation_id")
    return {
        "id": event.id,
        "name": event.name,
        "conversation_id": conversation_id if isinstance(conversation_id, str) else None,
        "payload": payload,
        "occurred_at": event.occurred_at,
    }

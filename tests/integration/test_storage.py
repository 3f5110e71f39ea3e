"""SqlStore and the migrations against real SQLite and PostgreSQL (fixtures in tests/conftest.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from agentloop.adapters.storage import SqlStore, create_engine, create_sessionmaker, ping, upgrade
from agentloop.adapters.storage.orm import Base, EventRow, MessageRow
from agentloop.domain.events import ConversationSaved, ResponseGenerated, ToolExecuted
from agentloop.domain.model import (
    Agent,
    Conversation,
    Message,
    ModelConfig,
    Role,
    ToolCall,
    ToolResult,
    Usage,
)
from agentloop.errors import NotFoundError, StorageError, ValidationError

TABLES = {
    "agents",
    "conversations",
    "messages",
    "events",
    "feedback",
    "model_versions",
    "users",
    "api_keys",
    "refresh_tokens",
    "auth_state",
    "training_jobs",
    "datasets",
}
BASE_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_agent(name: str = "calc") -> Agent:
    return Agent(
        name=name,
        model_config=ModelConfig(temperature=0.7, max_tokens=128, top_p=0.9, adapter="adapter-v3"),
        allowed_tools=("calculator", "python"),
        system_prompt="Be brief.",
        max_steps=3,
    )


def make_turn(conversation_id: str) -> list[Message]:
    """Question, tool call, its result, a failed tool, the answer; created_at deliberately unordered."""
    call = ToolCall(name="calculator", arguments={"expression": "2+3*4", "extra": {"xs": [1, 2.5, None]}})
    return [
        Message(
            conversation_id, Role.USER, "What is 2+3*4? ☃ ünïcode", created_at=BASE_TIME + timedelta(hours=1)
        ),
        Message(
            conversation_id,
            Role.ASSISTANT,
            tool_call=call,
            usage=Usage(120, 15),
            latency_ms=42.5,
            model_version="gemma-3-270m@abc123",
            created_at=datetime(2024, 5, 1, 14, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        ),
        Message(
            conversation_id,
            Role.TOOL,
            "14",
            tool_result=ToolResult(call_id=call.id, name="calculator", output="14", duration_ms=1.25),
        ),
        Message(
            conversation_id,
            Role.TOOL,
            tool_result=ToolResult(call_id="call_x", name="python", output="", ok=False, error="timeout"),
        ),
        Message(conversation_id, Role.ASSISTANT, "It is 14.", usage=Usage(150, 4), latency_ms=8.0),
    ]


def make_events(
    conversation_id: str, message_id: str
) -> list[ToolExecuted | ResponseGenerated | ConversationSaved]:
    return [
        ToolExecuted(conversation_id=conversation_id, tool_name="calculator", ok=True, duration_ms=1.25),
        ResponseGenerated(
            conversation_id=conversation_id,
            message_id=message_id,
            model_version="gemma-3-270m@abc123",
            prompt_tokens=150,
            completion_tokens=4,
            latency_ms=8.0,
            steps=2,
        ),
        ConversationSaved(conversation_id=conversation_id, message_count=5),
    ]


async def new_conversation(store: SqlStore, title: str = "", source: str = "api") -> Conversation:
    agent = await store.get_agent_by_name("calc")
    if agent is None:
        agent = make_agent()
        await store.create_agent(agent)
    conversation = Conversation(agent_id=agent.id, title=title, source=source)
    await store.create_conversation(conversation)
    return conversation


async def count_rows(
    engine: AsyncEngine, row: type[MessageRow] | type[EventRow], conversation_id: str
) -> int:
    query = select(func.count()).select_from(row).where(row.conversation_id == conversation_id)
    async with engine.connect() as connection:
        return (await connection.execute(query)).scalar_one()


def assert_utc(moment: datetime) -> None:
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)


# --- migrations ---------------------------------------------------------------------------------------------


async def test_migrations_create_tables_and_upgrade_is_idempotent(database_url: str) -> None:
    upgrade(database_url)  # on a running loop: runs in a worker thread
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars()
            assert list(versions) == ["0004"]
    finally:
        await engine.dispose()
    assert tables == TABLES | {"alembic_version"}


def test_upgrade_from_sync_code_creates_the_sqlite_directory(sqlite_url: str, tmp_path: Path) -> None:
    upgrade(sqlite_url)
    assert (tmp_path / "data" / "agentloop.db").is_file()


async def test_tables_match_the_migrations(sql_engine: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with sql_engine.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_ping(sql_engine: AsyncEngine) -> None:
    await ping(sql_engine)


async def test_ping_unreachable_database_raises_storage_error() -> None:
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(StorageError):
            await ping(engine)
    finally:
        await engine.dispose()


async def test_database_errors_become_storage_errors(database_url: str) -> None:
    engine = create_engine(database_url)  # not migrated: no tables
    try:
        with pytest.raises(StorageError):
            await SqlStore(create_sessionmaker(engine)).list_agents()
    finally:
        await engine.dispose()


# --- agents -------------------------------------------------------------------------------------------------


async def test_agent_create_get_list(sql_store: SqlStore) -> None:
    calc, writer = make_agent("calc"), make_agent("writer")
    await sql_store.create_agent(writer)
    await sql_store.create_agent(calc)

    loaded = await sql_store.get_agent(calc.id)
    assert loaded == calc
    assert_utc(loaded.created_at)
    assert await sql_store.get_agent_by_name("writer") == writer
    assert await sql_store.get_agent_by_name("nobody") is None
    assert await sql_store.list_agents() == [calc, writer]
    with pytest.raises(NotFoundError):
        await sql_store.get_agent("missing")


async def test_duplicate_agent_name_is_a_validation_error(sql_store: SqlStore) -> None:
    await sql_store.create_agent(make_agent("calc"))
    with pytest.raises(ValidationError) as caught:
        await sql_store.create_agent(make_agent("calc"))
    assert caught.value.field == "name"
    assert len(await sql_store.list_agents()) == 1


# --- conversations and messages -----------------------------------------------------------------------------


async def test_append_round_trips_messages_and_events(sql_store: SqlStore) -> None:
    conversation = await new_conversation(sql_store, title="Arithmetic", source="cli")
    turn = make_turn(conversation.id)
    events = make_events(conversation.id, turn[-1].id)

    await sql_store.append(conversation.id, turn, events)

    loaded = await sql_store.get_conversation(conversation.id)
    assert loaded.messages == turn  # every field, in append (seq) order, not created_at order
    assert (loaded.id, loaded.agent_id, loaded.title, loaded.source) == (
        conversation.id,
        conversation.agent_id,
        "Arithmetic",
        "cli",
    )
    assert loaded.created_at == conversation.created_at
    assert loaded.updated_at > conversation.updated_at
    for moment in [loaded.created_at, loaded.updated_at, *(m.created_at for m in loaded.messages)]:
        assert_utc(moment)
    assert await sql_store.get_message(turn[1].id) == turn[1]

    stored = await sql_store.list_events(conversation.id)
    assert sorted(e["name"] for e in stored) == ["ConversationSaved", "ResponseGenerated", "ToolExecuted"]
    by_name = {e["name"]: e for e in stored}
    for event in events:
        assert by_name[event.name]["payload"] == event.payload()
        assert by_name[event.name]["occurred_at"] == event.occurred_at
        assert_utc(by_name[event.name]["occurred_at"])


async def test_append_continues_the_sequence(sql_store: SqlStore, sql_engine: AsyncEngine) -> None:
    agent = make_agent()
    await sql_store.create_agent(agent)
    conversation = Conversation(agent_id=agent.id, title="seeded")
    conversation.messages.append(Message(conversation.id, Role.USER, "first"))
    await sql_store.create_conversation(conversation)  # a conversation may start with messages

    later = [Message(conversation.id, Role.ASSISTANT, "second"), Message(conversation.id, Role.USER, "third")]
    await sql_store.append(conversation.id, later[:1])
    await sql_store.append(conversation.id, later[1:])

    loaded = await sql_store.get_conversation(conversation.id)
    assert [m.content for m in loaded.messages] == ["first", "second", "third"]
    async with sql_engine.connect() as connection:
        query = select(MessageRow.seq).where(MessageRow.conversation_id == conversation.id)
        assert sorted((await connection.execute(query)).scalars()) == [1, 2, 3]


async def test_concurrent_appends_get_distinct_seqs(sql_store: SqlStore) -> None:
    conversation = await new_conversation(sql_store)

    await asyncio.gather(
        *(sql_store.append(conversation.id, [Message(conversation.id, Role.USER, f"m{i}")]) for i in range(8))
    )

    loaded = await sql_store.get_conversation(conversation.id)
    assert sorted(m.content for m in loaded.messages) == [f"m{i}" for i in range(8)]


async def test_concurrent_appends_share_transactions_and_keep_each_order(sql_store: SqlStore) -> None:
    conversations = [await new_conversation(sql_store) for _ in range(4)]
    started = sql_store._appends.transactions

    async def turns(conversation: Conversation) -> None:
        for i in range(3):
            messages = [
                Message(conversation.id, Role.USER, f"q{i}"),
                Message(conversation.id, Role.ASSISTANT, f"a{i}"),
            ]
            await sql_store.append(conversation.id, messages, make_events(conversation.id, messages[1].id))

    await asyncio.gather(*(turns(conversation) for conversation in conversations))

    for conversation in conversations:
        loaded = await sql_store.get_conversation(conversation.id)
        assert [m.content for m in loaded.messages] == ["q0", "a0", "q1", "a1", "q2", "a2"]
        assert len(await sql_store.list_events(conversation_id=conversation.id)) == 3 * 3
    # 12 appends, committed together while they arrived together
    assert sql_store._appends.transactions - started < 12


async def test_a_failing_append_among_concurrent_ones_fails_alone(
    sql_store: SqlStore, sql_engine: AsyncEngine
) -> None:
    good = await new_conversation(sql_store)
    message = Message(good.id, Role.USER, "kept")

    results = await asyncio.gather(
        sql_store.append(good.id, [message], make_events(good.id, message.id)),
        sql_store.append("missing", make_turn("missing")),
        return_exceptions=True,
    )

    assert results[0] is None
    assert isinstance(results[1], NotFoundError)
    assert [m.content for m in (await sql_store.get_conversation(good.id)).messages] == ["kept"]
    assert await count_rows(sql_engine, EventRow, good.id) == 3
    assert await count_rows(sql_engine, MessageRow, "missing") == 0


async def test_append_to_unknown_conversation_writes_nothing(
    sql_store: SqlStore, sql_engine: AsyncEngine
) -> None:
    turn = make_turn("missing")
    with pytest.raises(NotFoundError):
        await sql_store.append("missing", turn, make_events("missing", turn[-1].id))

    assert await count_rows(sql_engine, MessageRow, "missing") == 0
    assert await count_rows(sql_engine, EventRow, "missing") == 0
    assert await sql_store.list_events() == []


async def test_append_rejects_a_message_of_another_conversation(sql_store: SqlStore) -> None:
    conversation = await new_conversation(sql_store)
    with pytest.raises(ValidationError):
        await sql_store.append(conversation.id, [Message("other", Role.USER, "hi")])
    assert (await sql_store.get_conversation(conversation.id)).messages == []


async def test_conversation_errors(sql_store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        await sql_store.get_conversation("missing")
    with pytest.raises(NotFoundError):
        await sql_store.create_conversation(Conversation(agent_id="no-such-agent"))
    with pytest.raises(NotFoundError):
        await sql_store.get_message("missing")


async def test_list_conversations_pages_newest_first(sql_store: SqlStore) -> None:
    calc, other = make_agent("calc"), make_agent("other")
    await sql_store.create_agent(calc)
    await sql_store.create_agent(other)
    mine = []
    for i in range(5):
        conversation = Conversation(
            agent_id=calc.id, title=f"c{i}", updated_at=BASE_TIME + timedelta(minutes=i)
        )
        await sql_store.create_conversation(conversation)
        mine.append(conversation)
    await sql_store.create_conversation(
        Conversation(agent_id=other.id, title="theirs", updated_at=BASE_TIME + timedelta(days=1))
    )
    await sql_store.append(mine[0].id, [Message(mine[0].id, Role.USER, "bump")])  # now the newest of calc's

    page, total = await sql_store.list_conversations(limit=2, offset=0)
    assert ([c.title for c in page], total) == (["c0", "theirs"], 6)
    page, total = await sql_store.list_conversations(limit=2, offset=2, agent_id=calc.id)
    assert ([c.title for c in page], total) == (["c3", "c2"], 5)
    page, total = await sql_store.list_conversations(limit=2, offset=4, agent_id=calc.id)
    assert ([c.title for c in page], total) == (["c1"], 5)
    page, total = await sql_store.list_conversations(limit=10, offset=50)
    assert (page, total) == ([], 6)
    assert await sql_store.list_conversations(limit=0, offset=0) == ([], 6)
    page, _ = await sql_store.list_conversations(limit=1, offset=0)
    assert page[0].created_at.tzinfo is not None and page[0].owner_id is None
    page, _ = await sql_store.list_conversations(limit=1, offset=0, agent_id=calc.id)
    assert page[0].messages == []
    assert (await sql_store.list_conversations(limit=10, offset=0, agent_id="nobody")) == ([], 0)
    with pytest.raises(ValidationError):
        await sql_store.list_conversations(limit=-1, offset=0)


async def test_delete_conversation_cascades_to_messages(sql_store: SqlStore, sql_engine: AsyncEngine) -> None:
    conversation = await new_conversation(sql_store)
    kept = await new_conversation(sql_store)
    turn = make_turn(conversation.id)
    await sql_store.append(conversation.id, turn)
    await sql_store.append(kept.id, [Message(kept.id, Role.USER, "stay")])

    await sql_store.delete_conversation(conversation.id)

    assert await count_rows(sql_engine, MessageRow, conversation.id) == 0
    with pytest.raises(NotFoundError):
        await sql_store.get_conversation(conversation.id)
    with pytest.raises(NotFoundError):
        await sql_store.get_message(turn[0].id)
    with pytest.raises(NotFoundError):
        await sql_store.delete_conversation(conversation.id)
    assert [m.content for m in (await sql_store.get_conversation(kept.id)).messages] == ["stay"]


async def test_list_events_filters_and_limits(sql_store: SqlStore) -> None:
    first, second = await new_conversation(sql_store), await new_conversation(sql_store)
    await sql_store.append(
        first.id, [], [ConversationSaved(conversation_id=first.id, message_count=i) for i in range(3)]
    )
    await sql_store.append(second.id, [], [ConversationSaved(conversation_id=second.id, message_count=9)])

    assert len(await sql_store.list_events()) == 4
    assert [e["payload"]["message_count"] for e in await sql_store.list_events(second.id)] == [9]
    newest = await sql_store.list_events(limit=2)
    assert len(newest) == 2
    assert newest[0]["occurred_at"] >= newest[1]["occurred_at"]


# --- SQLite specifics ---------------------------------------------------------------------------------------


async def test_sqlite_data_survives_a_restart(sqlite_url: str) -> None:
    url = sqlite_url
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    store = SqlStore(create_sessionmaker(engine))
    conversation = await new_conversation(store, title="persisted")
    turn = make_turn(conversation.id)
    await store.append(conversation.id, turn, make_events(conversation.id, turn[-1].id))
    before = await store.get_conversation(conversation.id)
    await engine.dispose()

    restarted = create_engine(url)
    try:
        store = SqlStore(create_sessionmaker(restarted))
        assert await store.get_conversation(conversation.id) == before
        assert [a.name for a in await store.list_agents()] == ["calc"]
        assert len(await store.list_events(conversation.id)) == 3
    finally:
        await restarted.dispose()


async def test_sqlite_pragmas(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
            assert (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one() > 0
    finally:
        await engine.dispose()


async def test_sqlite_turn_writes_run_on_the_writer_thread_in_one_hop(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite file's engine has a writer; a turn's append (lock, max seq, messages, events, commit) is one
    call to it and no call to the async driver's thread; disposing the engine closes the writer's
    connection, and the next write opens a new one. In-memory databases have no writer."""
    import aiosqlite.core

    from agentloop.adapters.storage import sqlite_writer

    await asyncio.to_thread(upgrade, sqlite_url)
    engine = create_engine(sqlite_url)
    writer = sqlite_writer.writer_of(engine)
    assert writer is not None
    assert sqlite_writer.writer_of(create_engine("sqlite+aiosqlite://")) is None
    store = SqlStore(create_sessionmaker(engine))
    try:
        conversation = await new_conversation(store)
        hops = {"driver": 0, "writer": 0}
        threads: list[str] = []
        driver_call = aiosqlite.core.Connection._execute
        writer_call = sqlite_writer.SqliteWriter._run

        async def counted_driver(self: aiosqlite.Connection, fn: object, *args: object) -> object:
            hops["driver"] += 1
            return await driver_call(self, fn, *args)

        def counted_writer(self: sqlite_writer.SqliteWriter, write: object, items: object) -> None:
            import threading

            hops["writer"] += 1
            threads.append(threading.current_thread().name)
            writer_call(self, write, items)  # type: ignore[arg-type]

        monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted_driver)
        monkeypatch.setattr(sqlite_writer.SqliteWriter, "_run", counted_writer)
        turn = make_turn(conversation.id)
        await store.append(conversation.id, turn, make_events(conversation.id, turn[-1].id))
        assert hops == {"driver": 0, "writer": 1}
        assert threads[0].startswith("agentloop-sqlite-writer")
        monkeypatch.undo()

        await engine.dispose()  # the writer's idle connection is closed with the pool
        second = make_turn(conversation.id)
        await store.append(conversation.id, second)
        stored = await store.get_conversation(conversation.id)
        assert [m.id for m in stored.messages] == [m.id for m in [*turn, *second]]
        assert len(await store.list_events(conversation.id)) == 3
    finally:
        await engine.dispose()


async def test_sqlite_writer_and_async_writes_interleave(sqlite_url: str) -> None:
    """Writes of the async connections (new conversations) and of the writer thread (appends) to one file at
    once: SQLite's lock and busy timeout order them; nothing is lost."""
    await asyncio.to_thread(upgrade, sqlite_url)
    engine = create_engine(sqlite_url)
    store = SqlStore(create_sessionmaker(engine))
    try:
        first = await new_conversation(store)

        async def appends() -> None:
            for _ in range(20):
                turn = make_turn(first.id)
                await store.append(first.id, turn, make_events(first.id, turn[-1].id))

        async def creates() -> list[Conversation]:
            return [await new_conversation(store, title=f"c{i}") for i in range(20)]

        _, created = await asyncio.gather(appends(), creates())
        _, total = await store.list_conversations(100, 0)
        assert total == 21 and len(created) == 20
        stored = await store.get_conversation(first.id)
        assert len(stored.messages) == 20 * len(make_turn(first.id))
        assert len(await store.list_events(first.id, limit=1000)) == 60
    finally:
        await engine.dispose()


async def test_sqlite_writer_in_a_forked_child_starts_its_own_thread(sqlite_url: str) -> None:
    """A forked child does not hand work to the parent's writer thread, which it does not have: the fork
    hook gives it a thread (and connections) of its own, and a write there lands."""
    import os

    from agentloop.adapters.storage import sqlite_writer
    from agentloop.adapters.storage.repository import _append_all

    await asyncio.to_thread(upgrade, sqlite_url)
    engine = create_engine(sqlite_url)
    store = SqlStore(create_sessionmaker(engine))
    try:
        conversation = await new_conversation(store)
        await store.append(conversation.id, make_turn(conversation.id))  # the parent's thread is running
        writer = sqlite_writer.writer_of(engine)
        assert writer is not None
        parent_thread = writer._thread
        second = make_turn(conversation.id)
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's coverage is not collected)
            code = 1
            try:
                if writer._thread is not parent_thread:
                    append = [(conversation.id, second, ())]
                    writer._thread.submit(writer._run, _append_all, append).result(30)
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert writer._thread is parent_thread  # the parent's writer is untouched
        stored = await store.get_conversation(conversation.id)
        assert stored.messages[-1].id == second[-1].id  # the child's write landed
    finally:
        await engine.dispose()


async def test_groupthink_votes_are_stored_and_read_back_in_order(sql_engine: AsyncEngine) -> None:
    """SqlGroupThinkStore.add_events writes votes through the group-committed event write; concurrent
    callers' votes all land, and consensus_events reads them back oldest first."""
    from agentloop.adapters.storage.groupthink_repository import SqlGroupThinkStore
    from agentloop.domain.events import ConsensusReached

    votes = SqlGroupThinkStore(create_sessionmaker(sql_engine))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made = [
        ConsensusReached(
            conversation_id=None,
            message_id=None,
            prompt=f"q{i}",
            agreement=0.5 + i / 20,
            samples=3,
            labeled=i % 2 == 0,
            model_version="base",
            occurred_at=start + timedelta(seconds=i),
        )
        for i in range(6)
    ]
    await asyncio.gather(*(votes.add_events([vote]) for vote in reversed(made)))
    assert [(v.id, v.prompt, v.labeled) for v in await votes.consensus_events()] == [
        (v.id, v.prompt, v.labeled) for v in made
    ]

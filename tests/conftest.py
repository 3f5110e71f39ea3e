"""Shared fixtures. Each group sits in its own labelled section."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from agentloop.adapters.inference.llama import LlamaEngine
from agentloop.adapters.model_files import ModelFile, ensure_model
from agentloop.adapters.storage import SqlStore, create_engine, create_sessionmaker, upgrade
from agentloop.errors import EngineNotReadyError
from agentloop.settings import Settings

# ----------------------------------------------------------------------------------------------------------
# storage fixtures: a fresh, migrated database per test, SQLite (a file in tmp_path) and PostgreSQL
# (a throwaway database on 127.0.0.1:5432). `sql_store` runs a test once against each.
# ----------------------------------------------------------------------------------------------------------

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}


def database_unavailable(reason: str) -> NoReturn:
    """Skip locally; in CI a missing database is a failure, never a silent skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(**PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        database_unavailable(f"PostgreSQL on 127.0.0.1:5432 unreachable: {exc!r}")


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards; yields its SQLAlchemy async URL."""
    name = f"agentloop_test_{secrets.token_hex(8)}"
    admin = await _pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await _pg_admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in a nested directory that does not exist yet (create_engine/upgrade make it)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'agentloop.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[str]:
    """An empty database (not migrated) of each kind."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def sql_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the migrated database."""
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sql_store(sql_engine: AsyncEngine) -> SqlStore:
    return SqlStore(create_sessionmaker(sql_engine))


# ----------------------------------------------------------------------------------------------------------
# CI: a skipped test is a failure when CI=true, so a missing service or tool cannot pass silently.
# ----------------------------------------------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"


# ----------------------------------------------------------------------------------------------------------
# real model fixtures: the bundled Gemma 3 270M GGUF, assembled once into the shared model cache
# (AGENTLOOP_CACHE_DIR, default ~/.cache/agentloop) so no test pays the assembly twice, and one LlamaEngine
# for the whole session. Tests that use them are marked `model`.
# ----------------------------------------------------------------------------------------------------------

MODEL_N_CTX = 2048
# One llama.cpp (and torch) thread in every test engine and server. On 2 cores shared with other work,
# llama.cpp's second thread spins at each barrier waiting for a descheduled partner: measured at a load
# average of ~5, test_agent_real_model.py's turn took 105-122 s on 2 threads and 8-10 s on 1. On an idle
# machine 2 threads would be somewhat faster; 1 keeps the suite's time steady whatever else runs.
MODEL_THREADS = 1


def model_unavailable(reason: str) -> NoReturn:
    """Skip locally; in CI a missing model is a failure, never a silent skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def model_cache_dir() -> Path:
    return Path(os.environ.get("AGENTLOOP_CACHE_DIR") or Path.home() / ".cache" / "agentloop").expanduser()


@pytest.fixture(scope="session")
def model_file() -> ModelFile:
    """The bundled GGUF (~1 s when already assembled)."""
    try:
        return ensure_model(None, model_cache_dir())
    except EngineNotReadyError as exc:
        model_unavailable(f"the bundled model is unavailable: {exc}")


@pytest.fixture(scope="session")
async def llama_engine(model_file: ModelFile) -> AsyncIterator[LlamaEngine]:
    """One loaded engine for the session: loading is cheap, but the tests share its KV cache and queue."""
    engine = LlamaEngine(model_file.path, n_ctx=MODEL_N_CTX, n_threads=MODEL_THREADS)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture(scope="session")
async def batched_llama_engine(model_file: ModelFile) -> AsyncIterator[LlamaEngine]:
    """The same model with continuous batching: up to 4 sequences decoded together in one llama.cpp batch."""
    engine = LlamaEngine(model_file.path, n_ctx=MODEL_N_CTX, n_threads=MODEL_THREADS, max_parallel=4)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture(scope="session")
def model_settings(model_file: ModelFile) -> Callable[[Path], Settings]:
    """Settings for a real-model bootstrap on `data_dir`: the shared model cache, SQLite, no .env file."""

    def make(data_dir: Path) -> Settings:
        return Settings(  # type: ignore[call-arg]
            data_dir=data_dir,
            cache_dir=model_cache_dir(),
            database_url=None,
            model_path=None,
            n_ctx=MODEL_N_CTX,
            n_threads=MODEL_THREADS,
            _env_file=None,
        )

    return make

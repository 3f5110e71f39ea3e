"""Property-based fuzzing of every documented operation with schemathesis, as an authenticated admin, over
real HTTP (uvicorn in a thread, the real app and SQLite, a scripted engine): no input may cause a 5xx."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from agentloop.adapters.storage.auth_repository import SqlAuthStore
from agentloop.adapters.storage.database import create_engine, create_sessionmaker, upgrade
from agentloop.bootstrap import build_auth
from agentloop.domain.auth import LOCAL_ADMIN, Role
from agentloop.entrypoints.api import create_app
from agentloop.settings import Settings
from auth_helpers import bearer, fast_auth
from fakes import FakeEngine

# Per operation and generation mode; a longer hunt: FUZZ_EXAMPLES=200 pytest tests/e2e/test_schemathesis.py
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "3"))


async def make_admin_key(settings: Settings) -> str:
    engine = create_engine(settings.resolved_database_url)
    try:
        auth = build_auth(settings, SqlAuthStore(create_sessionmaker(engine)))
        _, key = await auth.create_api_key("schemathesis", Role.ADMIN, LOCAL_ADMIN)
        return key
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, admin API key) of a real server on a free port."""
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    settings = Settings(  # type: ignore[call-arg]
        data_dir=data_dir,
        cache_dir=data_dir / "cache",
        _env_file=None,
        rate_limit_user="100000/minute",
        rate_limit_ip="100000/minute",
        rate_limit_login="100000/minute",
        **fast_auth(),
    )
    upgrade(settings.resolved_database_url)
    key = asyncio.run(make_admin_key(settings))
    engine = FakeEngine(["Fine."] * 100_000)
    config = uvicorn.Config(
        create_app(settings, engine=engine), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        thread.join(30)


def fuzz(operation: schemathesis.APIOperation, base_url: str, key: str, mode: GenerationMode) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=base_url, headers=bearer(key), checks=[not_a_server_error], timeout=30
        )

    run()


def test_no_input_makes_the_server_fail(served: tuple[str, str]) -> None:
    base_url, key = served
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, base_url, key, mode)
            except hypothesis.errors.Unsatisfiable:
                continue  # no invalid input exists for an operation without parameters or body
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)

"""`agentloop feedback` and `agentloop models` in-process (typer's CliRunner) over the real bootstrap, SQLite
in tmp_path and a scripted FakeEngine passed as the bootstrap override `engine`."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from agentloop.adapters.storage import create_engine, create_sessionmaker, upgrade
from agentloop.adapters.storage.learning_repository import SqlLearningStore
from agentloop.domain.learning import BASE_VERSION, Feedback, ModelVersion, VersionStatus
from agentloop.entrypoints.cli import app
from fakes import FakeEngine

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
BASE_SHA = "b" * 64


class SwappingEngine(FakeEngine):
    """A FakeEngine that can switch versions, as the embedded engine does."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[tuple[str, Path | None]] = []

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        self.served.append((version_id, adapter_path))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(data_dir: Path, tmp_path: Path) -> Any:
    env = {
        "AGENTLOOP_DATA_DIR": None,
        "AGENTLOOP_DATABASE_URL": None,
        "AGENTLOOP_MODEL_PATH": None,
        "AGENTLOOP_CACHE_DIR": str(tmp_path / "cache"),
    }

    def run(*args: str, engine: FakeEngine | None = None) -> Result:
        overrides = {"engine": engine} if engine is not None else None
        return CliRunner().invoke(app, ["--data-dir", str(data_dir), *args], env=env, obj=overrides)

    return run


def in_database(data_dir: Path, action: Any) -> Any:
    """Run `action(store)` on the CLI's SQLite database, as another process (the trainer) would."""

    url = f"sqlite+aiosqlite:///{data_dir.resolve() / 'agentloop.db'}"
    upgrade(url)  # the CLI migrates on its first command; this may run before that

    async def go() -> Any:
        engine = create_engine(url)
        try:
            return await action(SqlLearningStore(create_sessionmaker(engine)))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def seed_versions(data_dir: Path, *idents: str) -> None:
    async def seed(store: SqlLearningStore) -> None:
        base = ModelVersion(BASE_VERSION, BASE_SHA)
        base.transition(VersionStatus.PROMOTED)
        await store.add_version(base)
        for ident in idents:
            adapter = data_dir / f"{ident}.gguf"
            adapter.write_bytes(f"lora {ident}".encode())
            digest = hashlib.sha256(adapter.read_bytes()).hexdigest()
            await store.add_version(
                ModelVersion(ident, BASE_SHA, BASE_VERSION, str(adapter), digest, metrics={"accuracy": 0.75})
            )

    in_database(data_dir, seed)


def ask(cli: Any) -> dict[str, Any]:
    result = cli("ask", "What is 2+2?", "--json", engine=FakeEngine([CALL, "It is 4."]))
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def stored_feedback(data_dir: Path) -> list[Feedback]:
    async def read(store: SqlLearningStore) -> list[Feedback]:
        return await store.list_feedback()

    result: list[Feedback] = in_database(data_dir, read)
    return result


def assert_clean_failure(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


# --- feedback -----------------------------------------------------------------------------------------------


def test_feedback_up_is_recorded(cli: Any, data_dir: Path) -> None:
    asked = ask(cli)

    result = cli("feedback", asked["message_id"], "--up", "--json")

    assert result.exit_code == 0, result.output
    given = json.loads(result.stdout)
    assert (given["message_id"], given["conversation_id"]) == (asked["message_id"], asked["conversation_id"])
    assert (given["rating"], given["correction"]) == ("up", None)
    assert [f.id for f in stored_feedback(data_dir)] == [given["id"]]


def test_feedback_with_a_correction_in_text(cli: Any, data_dir: Path) -> None:
    asked = ask(cli)

    result = cli("feedback", asked["message_id"], "--down", "--correction", "2+2 is 4.")

    assert result.exit_code == 0, result.output
    assert f"on message {asked['message_id']}: rated down, corrected" in result.stdout
    [given] = stored_feedback(data_dir)
    assert given.correction == "2+2 is 4."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "feedback needs a rating or a correction"),
        (("--up", "--down"), "not both"),
    ],
)
def test_feedback_refusals_exit_2(cli: Any, args: tuple[str, ...], message: str) -> None:
    asked = ask(cli)

    assert_clean_failure(cli("feedback", asked["message_id"], *args), 2, message)


def test_feedback_on_an_unknown_message_exits_2(cli: Any) -> None:
    assert_clean_failure(cli("feedback", "nope", "--up"), 2, "message nope not found")


# --- models -------------------------------------------------------------------------------------------------


def test_models_ls(cli: Any, data_dir: Path) -> None:
    empty = cli("models", "ls")
    assert empty.exit_code == 0, empty.output
    assert "no model versions yet" in empty.stdout
    seed_versions(data_dir, "v1")

    listed = cli("models", "ls", "--json")
    text = cli("models", "ls")

    assert listed.exit_code == 0, listed.output
    versions = json.loads(listed.stdout)
    assert [(v["id"], v["status"], v["serving"]) for v in versions] == [
        ("v1", "candidate", False),
        (BASE_VERSION, "promoted", True),
    ]
    assert versions[0]["metrics"] == {"accuracy": 0.75}
    assert text.exit_code == 0 and "v1" in text.stdout and "candidate" in text.stdout


def test_promote_and_rollback_are_recorded_for_the_server(cli: Any, data_dir: Path) -> None:
    seed_versions(data_dir, "v1", "v2")

    promoted = cli("models", "promote", "v1", "--json")
    assert promoted.exit_code == 0, promoted.output
    report = json.loads(promoted.stdout)
    assert (report["serving"], report["previous"], report["swapped_in_process"]) == (
        "v1",
        BASE_VERSION,
        False,
    )
    assert "next syncs" in report["note"]

    text = cli("models", "promote", "v2")
    assert text.exit_code == 0, text.output
    assert "v2 is now the promoted version (was v1)" in text.stdout
    assert "a running server switches to it when it next syncs" in text.stderr

    back = cli("models", "rollback", "--json")
    assert json.loads(back.stdout)["serving"] == "v1"
    versions = json.loads(cli("models", "ls", "--json").stdout)
    assert {v["id"]: v["status"] for v in versions} == {
        "v2": "retired",
        "v1": "promoted",
        BASE_VERSION: "retired",
    }


def test_an_engine_in_process_is_switched(cli: Any, data_dir: Path) -> None:
    seed_versions(data_dir, "v1")
    engine = SwappingEngine()

    result = cli("models", "promote", "v1", "--json", engine=engine)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["swapped_in_process"] is True
    assert engine.served[-1] == ("v1", data_dir / "v1.gguf")


def test_model_refusals_exit_2(cli: Any, data_dir: Path) -> None:
    assert_clean_failure(cli("models", "rollback"), 2, "nothing to roll back")
    seed_versions(data_dir, "v1")

    assert_clean_failure(cli("models", "promote", "v9"), 2, "model version v9 not found")
    assert_clean_failure(cli("models", "rollback"), 2, "nothing to roll back to")
    (data_dir / "v1.gguf").write_bytes(b"tampered")
    assert_clean_failure(cli("models", "promote", "v1"), 2, "does not match version v1")

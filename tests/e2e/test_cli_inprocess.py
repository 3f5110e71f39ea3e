"""The `agentloop` CLI in-process (typer's CliRunner) over the real bootstrap, SQLite in tmp_path and a
scripted FakeEngine passed as the bootstrap override `engine`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from agentloop.entrypoints.cli import app
from agentloop.entrypoints.cli_render import mask_url
from fakes import FakeEngine

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
ANSWER = "2+2 is 4."
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llama_cmake_args.py"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    """Keep the developer's AGENTLOOP_* settings out; the cache lives in tmp_path."""
    return {
        "AGENTLOOP_DATA_DIR": None,
        "AGENTLOOP_DATABASE_URL": None,
        "AGENTLOOP_MODEL_PATH": None,
        "AGENTLOOP_CACHE_DIR": str(tmp_path / "cache"),
    }


@pytest.fixture
def cli(data_dir: Path, env: dict[str, str | None]) -> Any:
    def run(
        *args: str, engine: FakeEngine | None = None, input: str | None = None, **extra_env: str
    ) -> Result:
        overrides = {"engine": engine} if engine is not None else None
        return CliRunner().invoke(
            app, ["--data-dir", str(data_dir), *args], input=input, env={**env, **extra_env}, obj=overrides
        )

    return run


def ask_json(cli: Any, *extra: str, replies: tuple[str, ...] = (CALL, ANSWER)) -> dict[str, Any]:
    result = cli("ask", "What is 2+2?", "--json", *extra, engine=FakeEngine(list(replies)))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_clean_failure(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_ask_json_prints_one_object_with_the_tool_step_and_the_answer(cli: Any) -> None:
    data = ask_json(cli)

    assert data["answer"] == ANSWER
    assert data["steps"] == [
        {"name": "calculator", "arguments": {"expression": "2+2"}, "result": "4", "ok": True}
    ]
    assert data["model_version"] == "fake-1"
    assert data["usage"]["prompt_tokens"] > 0
    assert data["usage"]["completion_tokens"] > 0
    assert data["latency_ms"] >= 0
    assert data["conversation_id"] and data["message_id"]


def test_ask_streams_the_answer_and_a_line_per_tool_step(cli: Any) -> None:
    result = cli("ask", "What is 2+2?", engine=FakeEngine([CALL, ANSWER]))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ['→ calculator({"expression": "2+2"}) = 4', ANSWER]
    assert "fake-1" in result.stderr


def test_ask_continues_a_conversation(cli: Any) -> None:
    first = ask_json(cli)
    second = ask_json(cli, "--conversation", first["conversation_id"], replies=("Still 4.",))

    assert second["conversation_id"] == first["conversation_id"]
    assert second["steps"] == []
    shown = json.loads(cli("conversations", "show", first["conversation_id"], "--json").stdout)
    assert [m["role"] for m in shown["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]


def test_conversations_ls_and_show_list_the_asked_conversation(cli: Any) -> None:
    asked = ask_json(cli)

    listed = cli("conversations", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.stdout)
    assert page["total"] == 1
    assert [c["id"] for c in page["items"]] == [asked["conversation_id"]]
    assert page["items"][0]["source"] == "cli"

    shown = cli("conversations", "show", asked["conversation_id"], "--json")
    assert shown.exit_code == 0, shown.output
    conversation = json.loads(shown.stdout)
    tool_message = conversation["messages"][2]
    assert tool_message["tool_result"]["output"] == "4"
    assert conversation["messages"][-1]["content"] == ANSWER
    assert conversation["messages"][-1]["model_version"] == "fake-1"


def test_conversations_text_output_shows_table_and_steps(cli: Any) -> None:
    asked = ask_json(cli)

    listed = cli("conversations", "ls")
    shown = cli("conversations", "show", asked["conversation_id"])

    assert listed.exit_code == 0 and shown.exit_code == 0, listed.output + shown.output
    assert asked["conversation_id"] in listed.stdout
    assert 'calculator({"expression": "2+2"}) = 4' in shown.stdout
    assert ANSWER in shown.stdout


def test_show_unknown_conversation_exits_2_with_one_line(cli: Any) -> None:
    result = cli("conversations", "show", "nope")

    assert_clean_failure(result, 2, "conversation nope not found")
    assert result.stderr.count("\n") == 1


def test_ask_in_unknown_conversation_exits_2(cli: Any) -> None:
    result = cli("ask", "hi", "--conversation", "nope", engine=FakeEngine(["unused"]))

    assert_clean_failure(result, 2, "conversation nope not found")


def test_a_rejected_first_message_stores_no_conversation(cli: Any) -> None:
    """`ask` and `chat` title a new conversation by its first message: one a turn refuses (blank, over
    AGENTLOOP_MAX_MESSAGE_CHARS) leaves no empty conversation behind."""
    assert_clean_failure(cli("ask", "  ", engine=FakeEngine(["unused"])), 2, "message must not be empty")
    too_long = cli("ask", "What is 2+2?", engine=FakeEngine(["unused"]), AGENTLOOP_MAX_MESSAGE_CHARS="5")
    assert_clean_failure(too_long, 2, "the limit is 5")
    chat = cli("chat", engine=FakeEngine(["unused"]), input="What is 2+2?\n", AGENTLOOP_MAX_MESSAGE_CHARS="5")
    assert chat.exit_code == 0 and "the limit is 5" in chat.output, chat.output

    listed = cli("conversations", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["total"] == 0


def test_invalid_settings_exit_2_without_traceback(cli: Any) -> None:
    result = cli("conversations", "ls", AGENTLOOP_N_CTX="1")

    assert_clean_failure(result, 2, "invalid settings: n_ctx")


def test_chat_streams_turns_and_new_starts_another_conversation(cli: Any) -> None:
    engine = FakeEngine([CALL, ANSWER, "Hello!"])

    result = cli("chat", engine=engine, input="What is 2+2?\n\n/new\nhi\n/exit\n")

    assert result.exit_code == 0, result.output
    assert '→ calculator({"expression": "2+2"}) = 4' in result.stdout
    assert ANSWER in result.stdout and "Hello!" in result.stdout
    page = json.loads(cli("conversations", "ls", "--json").stdout)
    assert sorted(c["title"] for c in page["items"]) == ["What is 2+2?", "hi"]


def test_chat_ends_at_end_of_input(cli: Any) -> None:
    result = cli("chat", engine=FakeEngine([ANSWER]), input="What is 2+2?\n")

    assert result.exit_code == 0, result.output
    assert ANSWER in result.stdout


def test_db_upgrade_creates_the_schema_in_the_data_dir(cli: Any, data_dir: Path, tmp_path: Path) -> None:
    result = cli("db", "upgrade", AGENTLOOP_DATA_DIR=str(tmp_path / "elsewhere"))

    assert result.exit_code == 0, result.output
    database = data_dir / "agentloop.db"
    assert str(database) in result.stdout
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"agents", "conversations", "messages", "events", "alembic_version"} <= tables
    assert not (tmp_path / "elsewhere").exists()
    assert cli("db", "upgrade").exit_code == 0


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql+asyncpg://agent:s3cret@db:5432/agentloop")

    assert "s3cret" not in masked
    assert masked == "postgresql+asyncpg://agent:***@db:5432/agentloop"


def test_doctor_json_reports_each_check(cli: Any, tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(60))

    result = cli("doctor", "--json", AGENTLOOP_MODEL_PATH=str(model))

    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert result.exit_code == (0 if report["ok"] else 1), result.output
    assert report["ok"] == all(check["ok"] for check in checks.values())
    assert checks["model"]["ok"], checks["model"]
    assert checks["model"]["data"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert checks["model"]["data"]["size_bytes"] == 64
    assert checks["database"]["ok"], checks["database"]
    assert checks["data dir"]["ok"], checks["data dir"]
    assert checks["python"]["data"]["version"] == ".".join(map(str, sys.version_info[:3]))
    script = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    assert checks["cmake args"]["data"]["cmake_args"] == script.stdout.strip()


def test_doctor_fails_when_the_model_file_is_missing(cli: Any, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.gguf")

    table = cli("doctor", AGENTLOOP_MODEL_PATH=missing)
    report = json.loads(cli("doctor", "--json", AGENTLOOP_MODEL_PATH=missing).stdout)

    assert table.exit_code == 1, table.output
    assert "agentloop doctor" in table.stdout and "fail" in table.stdout
    assert "Traceback" not in table.output
    model = next(check for check in report["checks"] if check["name"] == "model")
    assert not report["ok"] and not model["ok"]
    assert missing in model["detail"]


def test_serve_with_a_missing_model_fails_before_starting_the_server(cli: Any, tmp_path: Path) -> None:
    result = cli("serve", "--port", "1", AGENTLOOP_MODEL_PATH=str(tmp_path / "missing.gguf"))

    assert_clean_failure(result, 1, "missing.gguf does not exist")

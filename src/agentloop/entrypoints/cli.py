"""The `agentloop` command: serve the API, migrate the database, ask and chat in-process, inspect stored
conversations and diagnose an installation.

Every command builds the application through `bootstrap`. Tests inject parts (a fake engine) by passing a
dict of bootstrap overrides as the click `obj`: `CliRunner().invoke(app, [...], obj={"engine": fake})`.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import os
import platform
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Annotated, Any

import pydantic
import typer
import uvicorn
from typer.core import TyperGroup

from agentloop import __version__
from agentloop.adapters.cpu import cmake_args, read_cpu_flags, relevant_flags
from agentloop.adapters.logs import configure_logging
from agentloop.adapters.metrics import multiprocess_dir, prepare_multiprocess, process_exited
from agentloop.adapters.model_files import ensure_model
from agentloop.adapters.storage.database import create_engine, ping, upgrade
from agentloop.adapters.tools.sandbox import bwrap_path, network_isolation_prefix
from agentloop.application.ports import Completion, GenerationRequest, Token
from agentloop.bootstrap import Container, bootstrap
from agentloop.domain.model import Conversation
from agentloop.entrypoints.cli_auth import register as register_auth
from agentloop.entrypoints.cli_bench import register as register_bench
from agentloop.entrypoints.cli_improve import groupthink_json, print_groupthink
from agentloop.entrypoints.cli_improve import register as register_improve
from agentloop.entrypoints.cli_learning import register as register_learning
from agentloop.entrypoints.cli_render import (
    Check,
    TurnPrinter,
    checks_table,
    conversation_json,
    conversations_table,
    echo_json,
    err,
    mask_url,
    out,
    print_conversation,
    print_error,
    turn_json,
)
from agentloop.entrypoints.cli_training import register as register_training
from agentloop.errors import AgentLoopError, EngineNotReadyError, NotFoundError, ValidationError
from agentloop.settings import Settings

EXIT_CODES: dict[type[AgentLoopError], int] = {NotFoundError: 2, ValidationError: 2}


def exit_code(exc: AgentLoopError) -> int:
    """The exit code of an error: the entry of its nearest class in EXIT_CODES, else 1."""
    return next((EXIT_CODES[cls] for cls in type(exc).__mro__ if cls in EXIT_CODES), 1)


class ErrorMappingGroup(TyperGroup):
    """The top of every command: an AgentLoopError becomes one red line and an exit code, not a traceback."""

    def invoke(self, ctx: Any) -> Any:  # a click Context: typer keeps its copy of click private
        try:
            return super().invoke(ctx)
        except AgentLoopError as exc:
            print_error(str(exc))
            raise typer.Exit(exit_code(exc)) from exc


app = typer.Typer(
    cls=ErrorMappingGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="A self-improving local agent on a small Gemma model.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
conversations_app = typer.Typer(no_args_is_help=True, help="Stored conversations.")
app.add_typer(db_app, name="db")
app.add_typer(conversations_app, name="conversations")
register_learning(app)
register_training(app)
register_auth(app)
register_improve(app)
register_bench(app)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
ConversationOption = Annotated[
    str | None, typer.Option("--conversation", "-c", help="Continue this conversation instead of a new one.")
]


class OfflineEngine:
    """Stands in for the model in commands that only read stored data, so they never load it."""

    model_version = "offline"
    context_size = 0

    async def count_tokens(self, text: str) -> int:
        raise EngineNotReadyError("this command does not load the model")

    def stream(self, request: GenerationRequest) -> AsyncIterator[Token | Completion]:
        raise EngineNotReadyError("this command does not load the model")


@dataclass
class Wiring:
    """What commands share: the settings, and bootstrap overrides (only tests pass any)."""

    settings: Settings
    overrides: dict[str, Any] = field(default_factory=dict)

    def container(self) -> AbstractAsyncContextManager[Container]:
        return bootstrap(self.settings, **self.overrides)

    def store_container(self) -> AbstractAsyncContextManager[Container]:
        """The container without loading the model, for commands that only touch the database."""
        return bootstrap(self.settings, **{"engine": OfflineEngine(), **self.overrides})


def load_settings(data_dir: Path | None) -> Settings:
    """Settings from AGENTLOOP_* variables; `--data-dir` wins over AGENTLOOP_DATA_DIR."""
    values: dict[str, Any] = {} if data_dir is None else {"data_dir": data_dir}
    try:
        return Settings(**values)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValidationError(f"invalid settings: {problems}") from exc


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (overrides AGENTLOOP_DATA_DIR).")
    ] = None,
) -> None:
    """A self-improving local agent on a small Gemma model."""
    overrides = ctx.obj if isinstance(ctx.obj, dict) else {}
    ctx.obj = Wiring(load_settings(data_dir), dict(overrides))


def wiring(ctx: typer.Context) -> Wiring:
    found = ctx.find_object(Wiring)
    assert found is not None, "the root callback sets the wiring"
    return found


# --- serve, db ----------------------------------------------------------------------------------------------


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that says where it listens once startup (the model load included) has finished."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            err().print(f"agentloop is up on [bold]http://{self.config.host}:{self.config.port}[/]")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Bind address [default: AGENTLOOP_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: AGENTLOOP_PORT or 8000].")] = None,
) -> None:
    """Run the HTTP API with uvicorn."""
    from agentloop.entrypoints.api.app import create_app

    wired = wiring(ctx)
    settings = wired.settings
    bind = host or settings.host
    if not settings.auth_enabled and not is_loopback_bind(bind):
        raise ValidationError(
            f"refusing to serve without authentication on {bind}: AGENTLOOP_AUTH_ENABLED=false is allowed "
            "only on a loopback address (127.0.0.1, ::1, localhost)",
            field="auth_enabled",
        )
    embedded = "embedded" in (settings.inference_backend, *settings.inference_fallbacks)
    if "engine" not in wired.overrides and embedded:
        # A missing model fails here in one line instead of as a traceback from the app's lifespan; the
        # lifespan's own ensure_model then finds the file (and its hash) ready.
        ensure_model(settings.model_path, settings.cache_dir)
    # Before anything starts: the server and its worker write their metrics to one directory.
    if multiprocess_dir() is None:
        prepare_multiprocess(settings.resolved_data_dir / "prometheus")
    # One log format for uvicorn's lines and ours (JSON with AGENTLOOP_LOG_JSON); the app logs each request
    # itself, with its correlation id, so uvicorn's access log is off.
    configure_logging(settings.log_level, settings.log_json)
    config = uvicorn.Config(
        partial(create_app, settings, **wired.overrides),
        factory=True,
        host=bind,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        ws_max_size=settings.max_body_bytes,
    )
    worker = start_worker(wired) if settings.embedded_worker and not wired.overrides else None
    try:
        AnnouncingServer(config).run()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
            process_exited(worker.pid)


def is_loopback_bind(host: str) -> bool:
    """True when the bind address `host` listens on loopback only (0.0.0.0 and '' listen everywhere)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def start_worker(wired: Wiring) -> subprocess.Popen[bytes]:
    """The training worker beside the server, so the one-command setup learns too (a separate process:
    training never runs in the API process)."""
    command = [sys.executable, "-m", "agentloop", "--data-dir", str(wired.settings.data_dir)]
    return subprocess.Popen([*command, "worker"], preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    # If the server is killed outright (SIGKILL) its worker must not live on as an orphan.
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply the database migrations up to the latest revision."""
    url = wiring(ctx).settings.resolved_database_url
    upgrade(url)
    out().print(f"database is up to date: {mask_url(url)}", markup=False, soft_wrap=True)


# --- ask, chat ----------------------------------------------------------------------------------------------


async def new_conversation(container: Container, first_message: str) -> str:
    """A conversation titled by its first message, created only once that message is one a turn accepts:
    a rejected message leaves nothing stored."""
    container.agents.check_message(first_message)
    conversation = Conversation(container.default_agent.id, title=first_message[:80], source="cli")
    await container.store.create_conversation(conversation)
    return conversation.id


async def stream_turn(container: Container, conversation_id: str, text: str) -> None:
    printer = TurnPrinter()
    async for event in container.agents.run_turn(conversation_id, text):
        printer.handle(event)


async def _ask(
    wired: Wiring, text: str, conversation_id: str | None, as_json: bool, groupthink: bool = False
) -> None:
    async with wired.container() as container:
        conversation_id = conversation_id or await new_conversation(container, text)
        if groupthink and container.groupthink is not None:
            answer = await container.groupthink.answer(conversation_id, text)
            if as_json:
                echo_json(groupthink_json(answer))
            else:
                print_groupthink(answer)
        elif as_json:
            finished = await container.agents.ask(conversation_id, text)
            echo_json(turn_json(finished, conversation_id))
        else:
            await stream_turn(container, conversation_id, text)


@app.command()
def ask(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The question.")],
    conversation: ConversationOption = None,
    groupthink: Annotated[
        bool, typer.Option("--groupthink", help="Answer by the vote of several samples (GroupThink).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Ask the default agent one question in-process; tool steps are shown as they run."""
    asyncio.run(_ask(wiring(ctx), text, conversation, as_json, groupthink))


class Repl:
    """The chat loop. Input is read outside the event loop, so Ctrl-C at the prompt just quits."""

    def __init__(self, runner: asyncio.Runner, container: Container, conversation_id: str | None) -> None:
        self.runner = runner
        self.container = container
        self.conversation_id = conversation_id
        self.console = out()

    def run(self) -> None:
        self.console.print("[dim]/new starts a new conversation, /exit or Ctrl-D quits[/]")
        while (text := self.read()) not in (None, "/exit"):
            if text == "/new":
                self.conversation_id = None
                self.console.print("[dim]new conversation[/]")
            elif text:
                self.turn(text)

    def read(self) -> str | None:
        try:
            return self.console.input("[bold cyan]you>[/] ").strip()
        except EOFError:
            self.console.print()
            return None

    def turn(self, text: str) -> None:
        try:
            if self.conversation_id is None:
                self.conversation_id = self.runner.run(new_conversation(self.container, text))
            self.runner.run(stream_turn(self.container, self.conversation_id, text))
        except AgentLoopError as exc:
            # One bad turn (too long, context full) should not end the session.
            print_error(str(exc))
        except KeyboardInterrupt:
            self.console.print("\n[dim]interrupted[/]")


def _chat(wired: Wiring, conversation_id: str | None) -> None:
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        container = runner.run(stack.enter_async_context(wired.container()))
        try:
            if conversation_id is not None:
                runner.run(container.store.get_conversation(conversation_id))
            Repl(runner, container, conversation_id).run()
        finally:
            runner.run(stack.aclose())


@app.command()
def chat(ctx: typer.Context, conversation: ConversationOption = None) -> None:
    """Talk with the default agent; /new starts a new conversation, /exit or Ctrl-D quits."""
    _chat(wiring(ctx), conversation)


# --- conversations ------------------------------------------------------------------------------------------


async def _list_conversations(wired: Wiring, limit: int, offset: int) -> tuple[list[Conversation], int]:
    async with wired.store_container() as container:
        return await container.store.list_conversations(limit, offset)


async def _get_conversation(wired: Wiring, conversation_id: str) -> Conversation:
    async with wired.store_container() as container:
        return await container.store.get_conversation(conversation_id)


@conversations_app.command("ls")
def conversations_ls(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """List conversations, most recently updated first."""
    items, total = asyncio.run(_list_conversations(wiring(ctx), limit, offset))
    if as_json:
        page = [conversation_json(c, with_messages=False) for c in items]
        echo_json({"items": page, "total": total, "limit": limit, "offset": offset})
    else:
        out().print(conversations_table(items, total, offset))


@conversations_app.command("show")
def conversations_show(
    ctx: typer.Context,
    conversation_id: Annotated[str, typer.Argument(metavar="ID", help="The conversation's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a conversation's messages, tool calls and results."""
    conversation = asyncio.run(_get_conversation(wiring(ctx), conversation_id))
    if as_json:
        echo_json(conversation_json(conversation))
    else:
        print_conversation(out(), conversation)


# --- doctor -------------------------------------------------------------------------------------------------

# A check returns (detail, data) or raises: the exception's message is the failure's detail.
Finding = tuple[str, dict[str, Any]]


def check_python(_: Settings) -> Finding:
    version = platform.python_version()
    return version, {"version": version, "executable": sys.executable}


def check_agentloop(_: Settings) -> Finding:
    return __version__, {"version": __version__}


def check_llama(_: Settings) -> Finding:
    try:
        version = dist_version("llama-cpp-python")
    except PackageNotFoundError as exc:
        raise RuntimeError("llama-cpp-python is not installed (run scripts/setup.sh)") from exc
    importlib.import_module("llama_cpp")
    return f"{version}, imports", {"version": version, "imports": True}


def check_cpu(_: Settings) -> Finding:
    flags = relevant_flags(read_cpu_flags())
    return " ".join(flags) or "no flags found (no /proc/cpuinfo)", {"flags": flags}


def check_cmake(_: Settings) -> Finding:
    args = cmake_args(read_cpu_flags())
    return args, {"cmake_args": args}


def check_model(settings: Settings) -> Finding:
    model = ensure_model(settings.model_path, settings.cache_dir)
    size = model.path.stat().st_size
    detail = f"{model.path} ({size / 1e6:.1f} MB, sha256 {model.sha256[:12]}…)"
    return detail, {"path": str(model.path), "size_bytes": size, "sha256": model.sha256, "name": model.name}


async def _ping_database(url: str) -> None:
    database = create_engine(url)
    try:
        await ping(database)
    finally:
        await database.dispose()


def check_database(settings: Settings) -> Finding:
    url = settings.resolved_database_url
    asyncio.run(_ping_database(url))
    return f"{mask_url(url)} answers SELECT 1", {"url": mask_url(url)}


def check_data_dir(settings: Settings) -> Finding:
    path = settings.resolved_data_dir
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise RuntimeError(f"{existing} is not a writable directory")
    note = "" if existing == path else " (will be created)"
    return f"{path}{note}", {"path": str(path), "exists": existing == path}


def check_sandbox(_: Settings) -> Finding:
    # Reported, never failed: without bubblewrap the python tool still runs, with weaker containment.
    bwrap = bwrap_path()
    if bwrap is not None:
        return f"bubblewrap ({bwrap}): own namespaces, read-only /usr, workspace only", {"isolation": "bwrap"}
    net = " + unshare --net" if network_isolation_prefix() else ""
    detail = f"rlimits{net} only: install bubblewrap (apt-get install bubblewrap) to confine the file system"
    return detail, {"isolation": "unshare" if net else "rlimits"}


DOCTOR_CHECKS: dict[str, Callable[[Settings], Finding]] = {
    "python": check_python,
    "agentloop": check_agentloop,
    "llama-cpp-python": check_llama,
    "cpu flags": check_cpu,
    "cmake args": check_cmake,
    "model": check_model,
    "database": check_database,
    "data dir": check_data_dir,
    "sandbox": check_sandbox,
}


def run_check(name: str, check: Callable[[Settings], Finding], settings: Settings) -> Check:
    try:
        detail, data = check(settings)
    except Exception as exc:  # a diagnosis reports every failure instead of stopping at the first
        known = isinstance(exc, AgentLoopError | RuntimeError)
        return Check(name, False, str(exc) if known else f"{type(exc).__name__}: {exc}")
    return Check(name, True, detail, data)


@app.command()
def doctor(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Check the installation: Python, llama.cpp, CPU flags, model file, database, data dir."""
    settings = wiring(ctx).settings
    checks = [run_check(name, check, settings) for name, check in DOCTOR_CHECKS.items()]
    healthy = all(check.ok for check in checks)
    if as_json:
        echo_json({"ok": healthy, "checks": [asdict(check) for check in checks]})
    else:
        out().print(checks_table(checks))
    if not healthy:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()

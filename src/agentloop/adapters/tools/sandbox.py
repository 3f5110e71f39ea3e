"""The `python` tool: runs code in a separate, resource-limited process inside the conversation's workspace.

This is containment for a small model's mistakes (endless loops, memory bombs, runaway output), not a
security boundary against a hostile user: the code runs as the server's user and can read what it can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentloop.adapters.tools.files import ensure_workspace
from agentloop.application.tools import Tool, ToolContext, ToolExample
from agentloop.errors import ToolError

MAX_CODE_CHARS = 20_000
MAX_STDOUT_CHARS = 3000
MAX_STDERR_CHARS = 2000
# Read a little more than we show, then drop the rest, so a print loop cannot fill the server's memory.
READ_CAP_BYTES = 64 * 1024
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# `unshare --net` runs the command in a new, empty network namespace: only a loopback interface that is
# down, so the code cannot open any connection. It needs root (CAP_SYS_ADMIN); `--map-root-user` gets the
# same through an unprivileged user namespace where the kernel allows those.
_ISOLATION_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("unshare", "--net", "--"),
    ("unshare", "--user", "--map-root-user", "--net", "--"),
)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 512
    file_size_mb: int = 10
    max_processes: int = 64
    # Prepended to the command, e.g. ("unshare", "--net", "--"); empty = no network isolation.
    isolation_prefix: tuple[str, ...] = ()


def network_isolation_prefix() -> tuple[str, ...]:
    """Return the first `unshare` invocation that works here, or () when none does (best effort)."""
    for prefix in _ISOLATION_CANDIDATES:
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


async def run_python(code: str, workspace: Path, limits: SandboxLimits) -> str:
    """Run code with `python -I` in the workspace and return its labelled output."""
    if len(code) > MAX_CODE_CHARS:
        raise ToolError(f"code is too long ({len(code)} characters, limit {MAX_CODE_CHARS})")
    if "\x00" in code:
        raise ToolError("code must not contain NUL characters")
    cwd = ensure_workspace(workspace)
    process = await asyncio.create_subprocess_exec(
        *limits.isolation_prefix,
        sys.executable,
        "-I",
        "-c",
        code,
        cwd=cwd,
        env=_environment(cwd),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so one killpg ends every child it spawned
        preexec_fn=_rlimit_setter(limits),
    )
    try:
        stdout, stderr = await asyncio.wait_for(_collect(process), timeout=limits.timeout_s)
    except TimeoutError:
        raise ToolError(f"python timed out after {limits.timeout_s:g}s") from None
    finally:
        _kill_group(process.pid)
        await process.wait()
    if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        # The CPU-time limit (equal to the timeout) can fire before the wall clock: the same overrun.
        raise ToolError(f"python timed out after {limits.timeout_s:g}s")
    return _format(stdout, stderr, process.returncode)


def _environment(workspace: Path) -> dict[str, str]:
    # Nothing is inherited: API keys and tokens in the server's environment stay out of the sandbox.
    return {
        "PATH": SAFE_PATH,
        "HOME": str(workspace),
        "TMPDIR": str(workspace),
        "PYTHONIOENCODING": "utf-8",
        "LANG": "C.UTF-8",
    }


def _rlimit_setter(limits: SandboxLimits) -> Callable[[], None]:
    cpu_s = math.ceil(limits.timeout_s)
    wanted = {
        resource.RLIMIT_CPU: cpu_s,
        resource.RLIMIT_AS: limits.memory_mb * 1024 * 1024,
        resource.RLIMIT_FSIZE: limits.file_size_mb * 1024 * 1024,
        # Not enforced for root (CAP_SYS_RESOURCE), but it stops fork bombs everywhere else.
        resource.RLIMIT_NPROC: limits.max_processes,
        resource.RLIMIT_CORE: 0,
    }

    def set_limits() -> None:  # runs in the child between fork and exec
        for kind, value in wanted.items():
            _, hard = resource.getrlimit(kind)
            capped = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (capped, capped))

    return set_limits


async def _collect(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = await asyncio.gather(_read_capped(process.stdout), _read_capped(process.stderr))
    await process.wait()
    return stdout, stderr


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < READ_CAP_BYTES:
            kept += chunk[: READ_CAP_BYTES - len(kept)]
    return bytes(kept)


def _kill_group(pid: int) -> None:
    # Also after a normal exit: background children the code left behind must not outlive the call.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _format(stdout: bytes, stderr: bytes, returncode: int | None) -> str:
    out = _head(stdout.decode("utf-8", errors="replace"), MAX_STDOUT_CHARS)
    err = _tail(stderr.decode("utf-8", errors="replace"), MAX_STDERR_CHARS)
    parts = [out.rstrip("\n")] if out.strip() else []
    if err.strip():
        parts.append("[stderr]\n" + err.rstrip("\n"))
    if returncode:
        parts.append(_exit_label(returncode))
    return "\n".join(parts) or "(no output)"


def _exit_label(returncode: int) -> str:
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = str(-returncode)
        return f"[killed by signal {signame}]"
    return f"[exit code {returncode}]"


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]"


def _tail(text: str, limit: int) -> str:
    # The end of stderr holds the exception itself; that is the part worth keeping.
    return text if len(text) <= limit else f"[... {len(text) - limit} characters before]\n" + text[-limit:]


def python_tool(limits: SandboxLimits, timeout_s: float) -> Tool:
    """The `python` tool; timeout_s should exceed limits.timeout_s so the sandbox reports its own timeout."""

    async def handle(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return await run_python(str(arguments["code"]), ctx.workspace, limits)

    return Tool(
        name="python",
        description="Run a short Python program and return what it prints.",
        parameters={
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python source; use print()."}},
            "required": ["code"],
            "additionalProperties": False,
        },
        example=ToolExample(
            question="What are the first 8 Fibonacci numbers?",
            arguments={"code": "a, b = 0, 1\nfor _ in range(8):\n    print(a, end=' ')\n    a, b = b, a + b"},
            result="0 1 1 2 3 5 8 13",
            answer="The first 8 Fibonacci numbers are 0, 1, 1, 2, 3, 5, 8, 13.",
        ),
        handler=handle,
        timeout_s=timeout_s,
    )

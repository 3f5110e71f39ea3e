"""The `python` tool: runs code in a separate, resource-limited process inside the conversation's workspace.

With bubblewrap (`bwrap`, found at start) the code runs in its own mount, PID, network, IPC and UTS
namespaces: it sees /usr, the interpreter and its workspace (mounted at /workspace, the only writable
place), no /etc, no /home, no data directory, no network; a server running as root drops it to the
unprivileged user `nobody` (so the process-count limit holds) with no capabilities and no_new_privs.
Without bubblewrap it falls back to `unshare --net` and rlimits only: containment for a small model's
mistakes, not a boundary against a hostile user (`agentloop doctor` says which one is in force).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
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


SANDBOX_UID = 65534  # nobody
SANDBOX_WORKSPACE = "/workspace"
SANDBOX_PYTHON = "/python"
SANDBOX_PATH = "/usr/bin:/bin"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 512
    file_size_mb: int = 10
    max_processes: int = 64
    # Prepended to the command, e.g. ("unshare", "--net", "--"); empty = no network isolation.
    isolation_prefix: tuple[str, ...] = ()
    # A working bubblewrap binary: the code then runs in the confined file system described above.
    bwrap: str | None = None


@functools.cache
def bwrap_path() -> str | None:
    """The bubblewrap binary when it can build the sandbox here (probed once per process), else None."""
    found = shutil.which("bwrap", path=SAFE_PATH)
    if found is None:
        return None
    with tempfile.TemporaryDirectory(prefix="agentloop-probe-") as scratch:
        try:
            command = [*_bwrap_frame(found, Path(scratch)), "-I", "-c", "pass"]
            probe = subprocess.run(command, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
    return found if probe.returncode == 0 else None


def _usr_links() -> list[str]:
    # Merged-/usr systems have /bin, /lib... as links into /usr; older ones have real folders.
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _interpreter() -> tuple[list[str], str]:
    """Mounts that make the interpreter visible inside, and its path there."""
    real = Path(sys.executable).resolve()
    if real.is_relative_to("/usr"):
        return [], str(real)
    base = Path(sys.base_prefix).resolve()
    if real.is_relative_to(base):
        return ["--ro-bind", str(base), SANDBOX_PYTHON], str(Path(SANDBOX_PYTHON) / real.relative_to(base))
    return [], "/usr/bin/python3"


def _bwrap_frame(bwrap: str, workspace: Path) -> list[str]:
    """bwrap up to the command: namespaces, the read-only system, the writable workspace, a clean env."""
    as_root = os.geteuid() == 0
    # As root, bwrap makes the namespaces itself and setpriv then drops to nobody; otherwise an unprivileged
    # user namespace does the job and the process keeps the server's (non-root) user id.
    namespaces = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        namespaces.append("--unshare-user")
    mounts, python = _interpreter()
    env = {"PATH": SANDBOX_PATH, "HOME": SANDBOX_WORKSPACE, "TMPDIR": SANDBOX_WORKSPACE}
    env.update(PYTHONIOENCODING="utf-8", LANG="C.UTF-8")
    return [
        bwrap,
        *namespaces,
        "--die-with-parent",
        "--new-session",
        *_usr_links(),
        *mounts,
        "--proc", "/proc",
        "--dev", "/dev",
        "--bind", str(workspace), SANDBOX_WORKSPACE,
        "--chdir", SANDBOX_WORKSPACE,
        "--clearenv",
        *(arg for key, value in env.items() for arg in ("--setenv", key, value)),
        *_privileges(as_root),
        "--",
        *_drop_to_nobody(as_root),
        python,
    ]  # fmt: skip


def _privileges(as_root: bool) -> list[str]:
    keep = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP") if as_root and _setpriv() else ()
    return ["--cap-drop", "ALL", *(arg for cap in keep for arg in ("--cap-add", cap))]


def _drop_to_nobody(as_root: bool) -> list[str]:
    setpriv = _setpriv()
    if not as_root or setpriv is None:
        return []
    uid = str(SANDBOX_UID)
    return [
        setpriv, "--reuid", uid, "--regid", uid, "--clear-groups",
        "--inh-caps", "-all", "--bounding-set", "-all", "--no-new-privs", "--",
    ]  # fmt: skip


def _setpriv() -> str | None:
    found = shutil.which("setpriv", path=SAFE_PATH)
    return found if found and Path(found).resolve().is_relative_to("/usr") else None


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
    if limits.bwrap is not None:
        command = [*_bwrap_frame(limits.bwrap, cwd), "-I", "-c", code]
        if os.geteuid() == 0:
            try:
                os.chown(cwd, SANDBOX_UID, SANDBOX_UID)  # the only place the sandbox user may write
            except OSError as exc:
                raise ToolError(f"cannot prepare the sandbox workspace: {exc.strerror}") from exc
    else:
        command = [*limits.isolation_prefix, sys.executable, "-I", "-c", code]
    process = await asyncio.create_subprocess_exec(
        *command,
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
    returncode = process.returncode
    if limits.bwrap is not None and returncode is not None and returncode > 128:
        returncode = 128 - returncode  # bwrap reports a child killed by signal N as 128 + N
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        # The CPU-time limit (equal to the timeout) can fire before the wall clock: the same overrun.
        raise ToolError(f"python timed out after {limits.timeout_s:g}s")
    return _format(stdout, stderr, returncode)


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

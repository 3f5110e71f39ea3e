"""Training runs in its own process: `python -m agentloop.adapters.training.run SPEC_JSON` prints one JSON
event a line on stdout ({"event": "progress" | "result" | "error", ...}); SIGTERM or SIGINT cancel it after a
checkpoint. `run_training_process` drives it from asyncio. Nothing here imports torch at module level: the API
process imports this module, only the child loads torch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from agentloop.adapters.training.spec import TrainingError, TrainResult, TrainSpec

MODULE = "agentloop.adapters.training.run"
TERMINATE_GRACE_S = 120.0  # a cancelled child saves a checkpoint before it exits
STDERR_LINES = 40
CHILD_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------------------------------------
# the child
# ----------------------------------------------------------------------------------------------------------


def _emitter(out: TextIO) -> Callable[[dict[str, Any]], None]:
    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    return emit


def _cancel_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: the caller has stopped waiting for the checkpoint
            os._exit(128 + signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
    return stop


def main(argv: list[str] | None = None) -> int:
    """Run one training spec; exit 0 when it completed or was cancelled, 1 when it failed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} SPEC_JSON", file=sys.stderr)
        return 2
    # Libraries print to stdout now and then; stdout belongs to the event stream alone.
    emit, sys.stdout = _emitter(sys.stdout), sys.stderr
    stop = _cancel_on_signals()
    try:
        spec = TrainSpec.from_json(Path(args[0]).read_text())
        from agentloop.adapters.training.lora import train_lora

        result = train_lora(spec, lambda progress: emit({"event": "progress", **progress}), stop.is_set)
    except TrainingError as exc:
        emit({"event": "error", "error": str(exc)})
        return 1
    except Exception as exc:
        traceback.print_exc()
        emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"event": "result", **result.to_dict()})
    return 0


# ----------------------------------------------------------------------------------------------------------
# the parent
# ----------------------------------------------------------------------------------------------------------


async def run_training_process(
    spec: TrainSpec, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Train in a child process; cancelling the awaiting task cancels the run (SIGTERM, then a checkpoint)."""
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec.output_dir / "spec.json"
    spec_path.write_text(spec.to_json())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        MODULE,
        str(spec_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **CHILD_ENV},
    )
    stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
    drain = asyncio.create_task(_drain(process.stderr, stderr_tail))
    try:
        outcome = await _read_events(process, on_progress or (lambda _: None))
        await process.wait()
        await drain
    except asyncio.CancelledError:
        await _terminate(process)
        drain.cancel()
        raise
    if isinstance(outcome, TrainResult) and process.returncode == 0:
        return outcome
    reason = outcome if isinstance(outcome, str) else "".join(stderr_tail).strip()[-2000:]
    raise TrainingError(f"training process failed (exit {process.returncode}): {reason}")


async def _read_events(
    process: asyncio.subprocess.Process, on_progress: Callable[[dict[str, Any]], None]
) -> TrainResult | str | None:
    """The run's result, or its error message, or None when it ended without saying."""
    assert process.stdout is not None
    outcome: TrainResult | str | None = None
    async for raw in process.stdout:
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            continue  # not ours: a native library writing to fd 1
        kind = event.pop("event", None) if isinstance(event, dict) else None
        if kind == "progress":
            on_progress(event)
        elif kind == "result":
            outcome = TrainResult.from_dict(event)
        elif kind == "error":
            outcome = str(event.get("error", "unknown error"))
    return outcome


async def _drain(stream: asyncio.StreamReader | None, tail: deque[str]) -> None:
    if stream is None:
        return
    async for raw in stream:
        tail.append(raw.decode(errors="replace"))


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), TERMINATE_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


if __name__ == "__main__":
    sys.exit(main())

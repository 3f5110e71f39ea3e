"""A job enqueued by the server is known to the worker: both register the task under the same name even
though each passes its own callable (the server's lives in bootstrap, the worker's in the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huey import SqliteHuey

from agentloop.adapters.queue import HueyQueue


def defined_in(module: str, action: Callable[[str], object]) -> Callable[[str], object]:
    def run(job_id: str) -> object:
        return action(job_id)

    run.__module__ = module
    return run


def test_a_job_enqueued_by_the_server_runs_in_the_worker(tmp_path: Path) -> None:
    ran: list[str] = []
    queue_file = str(tmp_path / "queue.db")
    server = HueyQueue(SqliteHuey("agentloop", filename=queue_file), defined_in("agentloop.bootstrap", print))
    worker = HueyQueue(
        SqliteHuey("agentloop", filename=queue_file),
        defined_in("agentloop.entrypoints.cli_training", ran.append),
    )
    server.enqueue("job-1")
    task = worker.huey.dequeue()
    assert task is not None
    worker.huey.execute(task)
    assert ran == ["job-1"]

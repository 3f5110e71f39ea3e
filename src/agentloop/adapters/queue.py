"""The job queue: Huey, on SQLite in the data dir (embedded) or on Redis (AGENTLOOP_REDIS_URL) for several
API replicas and a separate worker machine. Tasks are registered on the instance a factory builds, never at
import time."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from redis.exceptions import RedisError

from agentloop.errors import StorageError
from agentloop.settings import Settings

TRAIN_TASK = "train"


def make_huey(settings: Settings) -> Huey:
    if settings.redis_url:
        return RedisHuey("agentloop", url=settings.redis_url, utc=True)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("agentloop", filename=str(settings.resolved_data_dir / "queue.db"), utc=True)


class HueyQueue:
    """Enqueues training jobs by id; `agentloop worker` consumes them."""

    def __init__(self, huey: Huey, run_job: Callable[[str], Any]) -> None:
        self.huey = huey

        # Huey names a task `<function's module>.<name>`: defined here, the name is the same in the server
        # that enqueues and the worker that consumes, whatever callable each passes in.
        def train(job_id: str) -> Any:
            return run_job(job_id)

        self._task = huey.task(name=TRAIN_TASK, retries=0)(train)

    def enqueue(self, job_id: str) -> None:
        try:
            self._task(job_id)
        except (RedisError, OSError, sqlite3.Error) as exc:
            raise StorageError(f"job queue unavailable: {type(exc).__name__}") from exc

    def consume(self) -> None:
        """Run the consumer in this process until it is interrupted (one job at a time)."""
        consumer = self.huey.create_consumer(workers=1, worker_type="thread", periodic=False)
        consumer.run()

"""The job queue: Huey, on SQLite in the data dir (embedded) or on Redis (AGENTLOOP_REDIS_URL) for several
API replicas and a separate worker machine. Tasks are registered on the instance a factory builds, never at
import time."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog
from huey import Huey, RedisHuey, SqliteHuey
from redis.exceptions import RedisError

from agentloop.errors import StorageError
from agentloop.settings import Settings

TRAIN_TASK = "train"
# An idle consumer polls at most this far apart, so a queued job starts within seconds.
MAX_POLL_DELAY_S = 2.0

logger = logging.getLogger(__name__)


def make_huey(settings: Settings) -> Huey:
    if settings.redis_url:
        return RedisHuey("agentloop", url=settings.redis_url, utc=True)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("agentloop", filename=str(settings.resolved_data_dir / "queue.db"), utc=True)


class HueyQueue:
    """Enqueues training jobs by id; `agentloop worker` consumes them. A job carries the correlation id of
    the request that queued it, so the worker's log lines for it can be found by that id."""

    def __init__(self, huey: Huey, run_job: Callable[[str], Any]) -> None:
        self.huey = huey

        # Huey names a task `<function's module>.<name>`: defined here, the name is the same in the server
        # that enqueues and the worker that consumes, whatever callable each passes in.
        def train(job_id: str, request_id: str | None = None) -> Any:
            context = (
                {"job_id": job_id} if request_id is None else {"job_id": job_id, "request_id": request_id}
            )
            with structlog.contextvars.bound_contextvars(**context):
                logger.info("training job %s started by the worker", job_id)
                try:
                    return run_job(job_id)
                finally:
                    logger.info("training job %s left the worker", job_id)

        self._task = huey.task(name=TRAIN_TASK, retries=0)(train)

    def enqueue(self, job_id: str) -> None:
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        try:
            self._task(job_id, request_id=request_id)
        except (RedisError, OSError, sqlite3.Error) as exc:
            raise StorageError(f"job queue unavailable: {type(exc).__name__}") from exc

    def consume(self) -> None:
        """Run the consumer in this process until it is interrupted (one job at a time)."""
        consumer = self.huey.create_consumer(
            workers=1, worker_type="thread", periodic=False, max_delay=MAX_POLL_DELAY_S
        )
        consumer.run()

"""cycle: one full learning cycle on this machine, stage by stage.

Real parts wired by `bootstrap` in a temporary data dir (SQLite, the bundled model, the real tools): agent
turns on arithmetic questions, each rated up; then one training job run here (`LearningService.run`):
dataset -> LoRA training in a subprocess -> GGUF export -> evaluation of candidate and serving version on
held-out suite items -> gate -> registry (promotion hot-swaps the engine). The job's own stage timings
(`progress.timings_s`) are reported, plus the wall time of the whole cycle. The gate is opened (min gain -1)
so the promotion and swap always happen and are timed too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import N_THREADS, Row, bench_settings

QUESTIONS = ("What is 12*7?", "What is 250 / 4?", "What is 99 * 3?", "What is 45 + 17?", "What is 3 ** 5?")


async def run(quick: bool) -> dict[str, Any]:
    from agentloop.bootstrap import bootstrap
    from agentloop.domain.learning import Feedback, Rating
    from agentloop.domain.model import Conversation

    steps, suites, items = (2, ["arithmetic"], 1) if quick else (10, [], 2)
    questions = QUESTIONS[:3] if quick else QUESTIONS
    with tempfile.TemporaryDirectory(prefix="agentloop-bench-cycle-") as data_dir:
        settings = bench_settings(
            Path(data_dir),
            train_max_steps=steps,
            train_batch_size=2,
            eval_suites=suites,
            eval_max_items_per_suite=items,
        )
        # Past the settings' validation (min gain >= 0), as the learning-cycle test does: always promote.
        settings = settings.model_copy(update={"gate_min_gain": -1.0, "gate_max_regression": 1.0})
        async with bootstrap(settings, follow_versions=False) as container:
            started = time.perf_counter()
            for question in questions:
                conversation = Conversation(container.default_agent.id)
                await container.store.create_conversation(conversation)
                outcome = await container.agents.ask(conversation.id, question)
                await container.learning_store.add_feedback(
                    Feedback(outcome.message.id, conversation.id, rating=Rating.UP, correction=None)
                )
            turns_s = time.perf_counter() - started
            job = await container.learning.submit({"min_examples": 2})
            cycle_started = time.perf_counter()
            finished = await container.learning.run(job.id)
            cycle_s = time.perf_counter() - cycle_started
            serving = container.engine.model_version
    return _result(finished, cycle_s, turns_s, steps, suites, items, len(questions), serving)


def _result(
    job: Any,
    cycle_s: float,
    turns_s: float,
    steps: int,
    suites: list[str],
    items: int,
    questions: int,
    serving: str,
) -> dict[str, Any]:
    progress = dict(job.progress or {})
    timings = progress.get("timings_s", {})
    completed = str(job.status) == "completed"
    split = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in timings.items())
    return {
        "parameters": {
            "questions": questions,
            "train_steps": steps,
            "train_batch_size": 2,
            "eval_suites": suites or "all",
            "eval_items_per_suite": items,
            "threads": N_THREADS,
        },
        "job": {"status": str(job.status), "error": job.error, "progress": progress},
        "cycle_s": cycle_s,
        "turns_s": turns_s,
        "serving_after": serving,
        "notes": [
            f"cycle: one learning cycle took {cycle_s:.0f} s on this machine ({split}); {questions} rated "
            f"agent turns before it took {turns_s:.0f} s. Job status {job.status}"
            + (f" ({job.error})" if job.error else "")
            + f"; serving version afterwards: {serving}."
        ],
        "rows": [
            Row(
                f"cycle: one full learning cycle ({steps} train steps, gate on {items} item(s)/suite)",
                "s",
                cycle_s,
                None,
                None,
                "info; completes",
                completed,
            ),
        ],
    }

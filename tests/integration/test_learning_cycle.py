"""One tiny real learning cycle on the real 270M model: conversations + corrections -> dataset -> LoRA
(1 step, subprocess) -> GGUF adapter -> evaluation of both versions -> gate -> registry -> hot swap; then
promote / rollback while requests are running, with no failed request.

Kept cheap for 2 shared cores: the turns use an agent with the calculator only (a ~300-token prompt instead
of the default agent's ~1,100, which every hot swap makes the engine prefill again) and model calls are
capped at 48 tokens, the evaluation's included (the base model answers one held-out item with 256 tokens of
digits otherwise). What the cycle does with each stage does not depend on the answers' length."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from agentloop.adapters import learning as learning_adapters
from agentloop.adapters.learning import EngineEvaluator
from agentloop.application.learning.evaluation import EvalSettings
from agentloop.bootstrap import bootstrap
from agentloop.domain.learning import BASE_VERSION, Feedback, JobStatus, Rating, VersionStatus
from agentloop.domain.model import Agent, Conversation, ModelConfig, Role
from agentloop.settings import Settings

pytestmark = [pytest.mark.model, pytest.mark.training, pytest.mark.timeout(900)]

QUESTIONS = ["What is 12*7?", "What is 250 / 4?"]  # 2 turns: 4 examples (tool call + answer each)
MAX_TOKENS = 48  # a calculator call is ~30 tokens


async def test_a_tiny_cycle_trains_gates_registers_and_hot_swaps(
    model_settings: Callable[[Path], Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        learning_adapters, "EvalSettings", functools.partial(EvalSettings, max_tokens=MAX_TOKENS, max_steps=2)
    )
    settings = model_settings(tmp_path).model_copy(
        update={
            "train_max_steps": 1,  # each step is ~7 s on one core: one shows the stage runs
            "train_batch_size": 2,
            "train_learning_rate": 1e-3,
            "eval_suites": ["arithmetic"],
            "eval_max_items_per_suite": 1,
            # The gate itself is unit-tested; here it must let the candidate through so swap is exercised.
            "gate_min_gain": -1.0,
            "gate_max_regression": 1.0,
        }
    )
    async with bootstrap(settings, follow_versions=False) as container:
        agent = Agent("cycle", ModelConfig(max_tokens=MAX_TOKENS), allowed_tools=("calculator",), max_steps=2)
        await container.store.create_agent(agent)
        for question in QUESTIONS:
            conversation = Conversation(agent.id)
            await container.store.create_conversation(conversation)
            outcome = await container.agents.ask(conversation.id, question)
            await container.learning_store.add_feedback(
                Feedback(outcome.message.id, conversation.id, rating=Rating.UP, correction=None)
            )
        assert await container.learning.datasets.usable_examples_since(None) >= len(QUESTIONS)

        # Short sequences keep the test fast; the default (2048) keeps the whole prompt prefix.
        job = await container.learning.submit({"min_examples": 2, "max_seq_len": 512})
        progress: list[dict[str, object]] = []

        async def record(update: object) -> None:
            progress.append(dict(update))  # type: ignore[call-overload]

        finished = await container.learning.run(job.id, record)

        assert finished.status == JobStatus.COMPLETED, finished.error
        stages = {p.get("stage") for p in progress}
        assert {"dataset", "train", "evaluate", "gate"} <= stages
        assert any("loss" in p for p in progress)
        version = await container.learning_store.get_version(finished.version_id or "")
        assert version.status == VersionStatus.PROMOTED
        assert version.adapter_path and Path(version.adapter_path).is_file()
        assert version.parent_id == BASE_VERSION and version.dataset_hash
        assert "evaluation" in version.metrics and "serving_evaluation" in version.metrics
        assert container.engine.model_version == version.id

        # Served by the new version: a turn of an agent without tools, a few tokens long.
        short = Agent("short", ModelConfig(max_tokens=4))
        await container.store.create_agent(short)
        conversation = Conversation(short.id)
        await container.store.create_conversation(conversation)
        answered = await container.agents.ask(conversation.id, "Hello!")
        assert answered.message.model_version == version.id

        await swap_under_load(container, agent, version_id=version.id)


async def swap_under_load(container: object, agent: Agent, version_id: str) -> None:
    """Promote and roll back while turns are running: none fails, each records the version that answered."""
    registry = container.registry  # type: ignore[attr-defined]
    agents = container.agents  # type: ignore[attr-defined]
    store = container.store  # type: ignore[attr-defined]

    async def one_turn(text: str) -> str:
        conversation = Conversation(agent.id)
        await store.create_conversation(conversation)
        return (await agents.ask(conversation.id, text)).message.model_version or ""

    # Each swap waits for the model calls already queued and empties the KV cache, so every turn here pays
    # a full prompt prefill: two turns and two swaps have calls in flight on each side of each swap
    # (bench/swap.py measures 20 swaps under load).
    turns = [asyncio.create_task(one_turn(f"What is {n} + {n}?")) for n in range(2)]
    await asyncio.sleep(0.5)
    await registry.rollback()
    await registry.promote(version_id)
    versions = await asyncio.gather(*turns)
    assert all(v in (version_id, BASE_VERSION) for v in versions)
    assert container.engine.model_version == version_id  # type: ignore[attr-defined]
    stored = await store.get_conversation((await store.list_conversations(1, 0))[0][0].id)
    assert all(m.model_version for m in stored.messages if m.role == Role.ASSISTANT)


def test_evaluator_picks_items_per_suite() -> None:
    evaluator = EngineEvaluator.__new__(EngineEvaluator)
    evaluator.suites, evaluator.max_items, evaluator.split = ["arithmetic", "units"], 2, "heldout"
    items = evaluator.items()
    assert len(items) == 4 and {i.suite for i in items} == {"arithmetic", "units"}
    assert dataclasses.is_dataclass(items[0])

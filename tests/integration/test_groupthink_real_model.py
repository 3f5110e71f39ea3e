"""GroupThink on the real 270M model: the vote over samples that really run their tools, and one tiny
`improve` cycle end to end (label -> dataset -> LoRA -> evaluate -> gate -> promote -> report files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agentloop.adapters.inference.llama import LlamaEngine
from agentloop.adapters.learning import EngineEvaluator
from agentloop.adapters.report import write_report
from agentloop.adapters.tools import builtin_tools
from agentloop.application.groupthink import GroupThink, GroupThinkConfig
from agentloop.application.learning.evaluation import load_suites
from agentloop.application.learning.improve import Improve
from agentloop.application.learning.labeling import PracticePrompt
from agentloop.application.tools import ToolRegistry
from agentloop.bootstrap import bootstrap
from agentloop.domain.model import Agent, ModelConfig
from agentloop.settings import Settings

pytestmark = [pytest.mark.model]


async def test_samples_of_the_real_model_run_the_calculator_and_agree(
    llama_engine: LlamaEngine, model_settings: Callable[[Path], Settings], tmp_path: Path
) -> None:
    # Start from an empty KV cache, as when this test runs alone: a prefix left cached by an earlier test
    # (test_batched_engine.py) changes the last bits of the logits, and sample 0 at temperature 0.3 then
    # answered "347 (17 * 29 = 347)." without calling the calculator. Serving the same version clears it.
    await llama_engine.serve_version(llama_engine.model_version, None)
    settings = model_settings(tmp_path)
    tools = ToolRegistry(builtin_tools(settings))
    config = GroupThinkConfig(samples=2, temperature=0.3, max_tokens=40)
    groupthink = GroupThink(llama_engine, tools, tmp_path / "ws", config)
    # One tool step, then the answer: 4 short model calls in all, so the test stays quick.
    agent = Agent("gt", ModelConfig(max_tokens=40), ("calculator",), max_steps=1)

    consensus = await groupthink.consensus(agent, [], "What is 347 * 29?")

    assert len(consensus.samples) == 2 and {s.seed for s in consensus.samples} == {0, 1}
    assert consensus.winner.steps and consensus.winner.steps[0][0].name == "calculator"
    assert consensus.winner.steps[0][1].output == "10063"
    assert consensus.winner.answer and "10063" in consensus.winner.answer.replace(",", "")
    assert 0.5 <= consensus.agreement <= 1.0
    assert sum(len(v.samples) for v in consensus.votes) == 2
    groupthink.discard(consensus)


@pytest.mark.training
@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_one_tiny_improve_cycle_with_the_real_model(
    model_settings: Callable[[Path], Settings], tmp_path: Path
) -> None:
    settings = model_settings(tmp_path).model_copy(
        update={
            "train_max_steps": 2,
            "train_batch_size": 2,
            "n_threads": 1,
            "groupthink_samples": 3,
            "groupthink_max_tokens": 48,
            "eval_max_items_per_suite": 1,
            "eval_suites": ["arithmetic", "units"],
            # The gate is unit-tested; here it must let the candidate through so promotion is exercised.
            "gate_min_gain": -1.0,
            "gate_max_regression": 1.0,
        }
    )
    async with bootstrap(settings, follow_versions=False) as container:
        assert container.labeler is not None
        container.labeler.curriculum = [
            # Two curriculum prompts the base model labeled (2 of 3 samples agreeing) in the measured run.
            PracticePrompt("What is 2468 * 1357?", ("calculator",), "arithmetic"),
            PracticePrompt("Calculate 50000 - 12345.", ("calculator",), "arithmetic"),
        ]
        container.learning.queue = None
        assert isinstance(container.learning.evaluator, EngineEvaluator)
        assert len(container.learning.evaluator.items()) == 2
        stages: list[str] = []

        async def record(update: dict[str, object]) -> None:
            stages.append(str(update.get("stage")))

        runner = Improve(container.labeler, container.learning, container.learning_store, {"test": True})
        report = await runner.run(1, 2, {"min_examples": 1, "max_seq_len": 512}, record)

    data = report.to_dict()
    [cycle] = data["cycles"]
    assert cycle["labeling"]["attempted"] == 2
    assert cycle["labeling"]["labeled"] >= 1, cycle
    assert cycle["status"] == "completed", cycle["error"]
    assert cycle["dataset"]["groupthink"] >= 1 and cycle["examples_gained"] >= 1
    assert cycle["promoted"] and data["serving"]["version"] == cycle["version"]
    assert data["base"]["version"] == "base" and data["base"]["items"] == 2
    assert {"label", "dataset", "train", "evaluate", "gate"} <= set(stages)
    assert set(cycle["timings_s"]) >= {"label", "dataset", "train", "evaluate", "gate"}
    files = write_report(data, tmp_path / "reports")
    assert json.loads(files["json"].read_text())["cycles"][0]["version"] == cycle["version"]
    assert files["chart"].read_bytes().startswith(b"\x89PNG")
    assert "| base |" in files["markdown"].read_text()
    assert not {i.prompt for i in load_suites(None, split=None)} & {"What is 2468 * 1357?"}

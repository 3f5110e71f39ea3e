"""The GroupThink labeler, the practice curriculum and the improve report, with fakes."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agentloop.adapters.tools import builtin_tools
from agentloop.application.groupthink import GroupThink, GroupThinkConfig, Sample, exemplary
from agentloop.application.learning.dataset import ConversationForTraining, Signal, examples_from
from agentloop.application.learning.evaluation import load_suites, suite_names
from agentloop.application.learning.improve import Improve, ImproveReport, Score, markdown
from agentloop.application.learning.labeling import (
    Demonstration,
    Labeler,
    PracticePrompt,
    as_history,
    borrows,
    coaching,
    interleaved,
    load_curriculum,
    load_demonstrations,
)
from agentloop.application.tools import Tool, ToolContext, ToolRegistry
from agentloop.domain.events import ConsensusReached, Event
from agentloop.domain.learning import JobStatus, ModelVersion, TrainingJob, VersionStatus
from agentloop.domain.model import Agent, Message, Role, ToolCall, ToolResult
from agentloop.errors import InferenceError, ValidationError
from agentloop.settings import Settings
from fakes import FakeEngine, FakeStore

# --- the curriculum -----------------------------------------------------------------------------------------


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def test_curriculum_never_repeats_an_evaluation_item() -> None:
    curriculum = load_curriculum()
    assert len(curriculum) >= 60
    evaluation = {normalised(item.prompt) for item in load_suites(None, split=None)}
    overlap = [p.prompt for p in curriculum if normalised(p.prompt) in evaluation]
    assert overlap == []
    assert len({normalised(p.prompt) for p in curriculum}) == len(curriculum)
    assert "curriculum" not in suite_names()


def test_curriculum_covers_every_suite_and_orders_tools_like_the_evaluation() -> None:
    curriculum = load_curriculum()
    assert {p.topic for p in curriculum} >= set(suite_names())
    files = next(p for p in curriculum if p.topic == "files")
    assert files.tools == ("list_files", "read_file", "write_file")


@pytest.mark.parametrize(
    "line", ["not json", '{"prompt": "x"}', '{"prompt": "x", "tools": ["nope"], "topic": "t"}']
)
def test_a_bad_curriculum_line_is_refused(line: str) -> None:
    with pytest.raises(ValidationError, match=r"curriculum\.jsonl:1"):
        load_curriculum(line)


# --- the coaching demonstrations ----------------------------------------------------------------------------


def test_demonstrations_are_no_evaluation_or_practice_prompt_and_cover_every_suite() -> None:
    demonstrations = load_demonstrations()
    evaluation = {normalised(item.prompt) for item in load_suites(None, split=None)}
    practice = {normalised(p.prompt) for p in load_curriculum()}
    overlap = [d.question for d in demonstrations if normalised(d.question) in evaluation | practice]
    assert overlap == []
    assert {d.topic for d in demonstrations} >= set(suite_names())
    assert len({normalised(d.question) for d in demonstrations}) == len(demonstrations)


async def test_demonstrations_show_what_the_real_tools_return_and_are_exemplary(tmp_path: Path) -> None:
    registry = ToolRegistry(builtin_tools(Settings(data_dir=tmp_path / "data")))
    for number, demonstration in enumerate(load_demonstrations()):
        workspace = tmp_path / f"w{number}"
        workspace.mkdir()
        steps = []
        for call, shown in demonstration.steps:
            result = await registry.execute(call, ToolContext("demo", workspace))
            assert (result.ok, result.output) == (True, shown), demonstration.question
            steps.append((call, result))
        turn = Sample(0, tuple(steps), demonstration.answer)
        assert exemplary(turn, demonstration.question), demonstration.question


DEMOS = json.dumps(
    [
        {
            "topic": "arithmetic",
            "question": "What is 2 * 3?",
            "answer": "6.",
            "steps": [{"name": "calculator", "arguments": {"expression": "2 * 3"}, "output": "6"}],
        },
        {
            "topic": "dates",
            "question": "What day was 2000-01-01?",
            "answer": "Saturday.",
            "steps": [{"name": "python", "arguments": {"code": "print(1)"}, "output": "Saturday"}],
        },
        {"topic": "direct", "question": "Hi!", "answer": "Hello!", "steps": []},
        {
            "topic": "units",
            "question": "How many minutes are in 2 hours?",
            "answer": "120.",
            "steps": [{"name": "calculator", "arguments": {"expression": "2 * 60"}, "output": "120"}],
        },
        {
            "topic": "units",
            "question": "How many grams are in 2 kilograms?",
            "answer": "2000.",
            "steps": [{"name": "calculator", "arguments": {"expression": "2 * 1000"}, "output": "2000"}],
        },
    ]
)


def questions(shown: Sequence[Any]) -> list[str]:
    """The questions of demonstrations, or of the user messages among messages."""
    return [
        m.question if isinstance(m, Demonstration) else m.content
        for m in shown
        if not isinstance(m, Message) or m.role == Role.USER
    ]


def test_coaching_shows_the_topic_s_most_alike_demonstrations_nearest_the_question() -> None:
    demos = load_demonstrations(DEMOS)
    minutes = as_history(coaching("How many minutes are in 9 hours?", "units", ("calculator",), demos, 2))
    assert questions(minutes) == ["How many grams are in 2 kilograms?", "How many minutes are in 2 hours?"]
    assert [m.role for m in minutes[4:]] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert minutes[5].tool_call is not None and minutes[6].content == "120"
    # No demonstration of the topic: those the offered tools can follow, tool-less ones included.
    assert questions(coaching("x", "stored", ("python",), demos, 5)) == ["What day was 2000-01-01?", "Hi!"]
    assert questions(coaching("x", "dates", ("calculator",), demos, 5)) == [
        "What is 2 * 3?",
        "Hi!",
        "How many minutes are in 2 hours?",
        "How many grams are in 2 kilograms?",
    ]
    assert coaching("x", "units", ("calculator",), demos, 0) == []


def test_a_turn_that_reuses_a_demonstration_s_file_or_text_is_a_copy() -> None:
    shown = load_demonstrations(
        json.dumps(
            [
                {
                    "topic": "files",
                    "question": "Write 'buy bread' to errands.txt.",
                    "answer": "Saved.",
                    "steps": [
                        {
                            "name": "write_file",
                            "arguments": {"path": "errands.txt", "content": "buy bread"},
                            "output": "wrote 9 bytes to errands.txt",
                        }
                    ],
                }
            ]
        )
    )
    copied = Sample(0, (), "I saved 'buy bread' to errands.txt.")
    assert borrows(copied, "Which files do I have?", shown)
    wrote = ToolCall("write_file", {"path": "errands.txt", "content": "eggs"})
    own = Sample(0, ((wrote, ToolResult(wrote.id, "write_file", "wrote 4 bytes to errands.txt")),), "Saved.")
    assert not borrows(own, "Save 'eggs' to errands.txt.", shown)
    assert not borrows(Sample(0, (), "You have no files."), "Which files do I have?", shown)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '[{"topic": "x"}]',
        '[{"topic": "x", "question": "q", "answer": "a", "steps": [{"name": "calculator"}]}]',
    ],
)
def test_bad_demonstrations_are_refused(text: str) -> None:
    with pytest.raises(ValidationError, match=r"demonstrations\.json"):
        load_demonstrations(text)


async def test_samples_see_the_demonstrations_but_the_label_does_not(tmp_path: Path) -> None:
    good = [call_text(expression="6*7"), "42"]
    worker = labeler(tmp_path, good * 3)
    worker.demonstrations = load_demonstrations(DEMOS)
    worker.coaching_limit = 1
    report = await worker.label(limit=1)
    assert report.labeled == 1
    engine = worker.groupthink.engine
    assert isinstance(engine, FakeEngine) and engine.requests
    assert all("What is 2 * 3?" in request.prompt for request in engine.requests)
    assert isinstance(worker.conversations, FakeAgents)
    [conversation] = worker.conversations.conversations.values()
    assert questions(conversation.messages) == ["What is 6*7?"]
    assert all("2 * 3" not in m.content for m in conversation.messages)


# --- the labeler --------------------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}


async def multiply(arguments: dict[str, Any], context: ToolContext) -> str:
    left, right = arguments["expression"].replace(" ", "").split("*")
    return str(int(left) * int(right))


def call_text(**arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": "calculator", "arguments": arguments}) + "</tool_call>"


class FakeAgents(FakeStore):
    async def get_agent_by_name(self, name: str) -> Agent | None:
        return next((a for a in self.agents.values() if a.name == name), None)

    async def create_agent(self, agent: Agent) -> None:
        self.agents[agent.id] = agent


class FakeLabels:
    def __init__(self, agents: FakeAgents, stored: Sequence[PracticePrompt] = ()) -> None:
        self.agents = agents
        self.events: list[Event] = []
        self.stored = list(stored)

    async def consensus_events(self) -> list[ConsensusReached]:
        everything = [*self.events, *self.agents.events]
        votes = [e for e in everything if isinstance(e, ConsensusReached)]
        return sorted(votes, key=lambda e: e.occurred_at)

    async def unrated_prompts(self, limit: int) -> list[PracticePrompt]:
        return self.stored[:limit]

    async def add_events(self, events: Sequence[Event]) -> None:
        self.events.extend(events)


def labeler(tmp_path: Path, replies: list[str | Exception], stored: Sequence[PracticePrompt] = ()) -> Labeler:
    engine = FakeEngine(replies)
    registry = ToolRegistry([Tool("calculator", "Multiplies.", SCHEMA, handler=multiply)])
    groupthink = GroupThink(engine, registry, tmp_path / "ws", GroupThinkConfig(samples=3, threshold=0.6))
    agents = FakeAgents()
    curriculum = [
        PracticePrompt("What is 6*7?", ("calculator",), "arithmetic"),
        PracticePrompt("Hi!", ("calculator",), "direct"),
    ]
    return Labeler(groupthink, FakeLabels(agents, stored), agents, curriculum)


async def test_labels_what_passes_and_records_what_does_not(tmp_path: Path) -> None:
    good = [call_text(expression="6*7"), "42"]
    replies: list[str | Exception] = [*good, *good, "41", "Hello!", "Hi.", "Greetings"]
    worker = labeler(tmp_path, replies)
    report = await worker.label(limit=5)
    assert (report.attempted, report.labeled, report.examples) == (2, 1, 2)
    assert report.topics == {
        "arithmetic": {"attempted": 1, "labeled": 1},
        "direct": {"attempted": 1, "labeled": 0},
    }
    store = worker.conversations
    assert isinstance(store, FakeAgents)
    [conversation] = store.conversations.values()
    assert conversation.source == "groupthink" and conversation.title == "What is 6*7?"
    agent = store.agents[conversation.agent_id]
    assert agent.name == "practice: calculator" and agent.allowed_tools == ("calculator",)
    votes = await worker.labels.consensus_events()
    assert [(v.prompt, v.labeled) for v in votes] == [("What is 6*7?", True), ("Hi!", False)]
    # The dataset builder reads the label as the `groupthink` signal, one example per model call.
    labeled = next(v for v in votes if v.labeled)
    assert labeled.message_id == conversation.messages[-1].id
    source = ConversationForTraining(
        conversation,
        agent.system_prompt,
        worker.groupthink.tools.select(["calculator"]),
        (),
        {labeled.message_id: labeled.agreement},
    )
    examples = examples_from([source])
    assert [e.signal for e in examples] == [Signal.GROUPTHINK, Signal.GROUPTHINK]
    assert examples[0].completion.startswith("<tool_call>")


async def test_a_prompt_is_tried_once_per_model_version(tmp_path: Path) -> None:
    worker = labeler(tmp_path, ["1", "1", "1", "2", "2", "2"])
    await worker.label(limit=2)
    assert await worker.candidates("fake-1") == []
    assert [p.prompt for p in await worker.candidates("fake-2")] == ["What is 6*7?", "Hi!"]


async def test_stored_prompts_come_first_with_their_own_agent(tmp_path: Path) -> None:
    worker = labeler(tmp_path, [call_text(expression="7*3"), "21"] * 3)
    assert isinstance(worker.conversations, FakeAgents)
    owner = Agent("owner", allowed_tools=("calculator",))
    await worker.conversations.create_agent(owner)
    assert isinstance(worker.labels, FakeLabels)
    worker.labels.stored = [PracticePrompt("What is 7*3?", (), "stored", owner.id)]
    report = await worker.label(limit=1)
    assert report.labeled == 1 and report.topics == {"stored": {"attempted": 1, "labeled": 1}}
    [conversation] = worker.conversations.conversations.values()
    assert conversation.agent_id == owner.id


async def test_no_sample_finishing_skips_the_prompt(tmp_path: Path) -> None:
    worker = labeler(tmp_path, [InferenceError("down")] * 3)
    report = await worker.label(limit=1)
    assert (report.attempted, report.labeled) == (1, 0)


# --- the improve report -------------------------------------------------------------------------------------


def eval_report(version: str, accuracy: float) -> dict[str, Any]:
    item = {"calls": [{"valid": True}, {"valid": False}]}
    return {
        "version": version,
        "accuracy": accuracy,
        "suites": {"units": {"accuracy": accuracy}},
        "items": [item],
    }


def test_report_markdown_names_versions_gain_and_stages() -> None:
    report = ImproveReport({"cycles": 1})
    report.base = Score.of(eval_report("base", 0.25))
    report.serving = Score.of(eval_report("v2", 0.5))
    data = report.to_dict()
    assert data["gain_points"] == 25.0
    assert report.base.valid_call_rate == 0.5
    text = markdown(
        {**data, "finished_at": "now", "versions": [report.base.to_dict(), report.serving.to_dict()]}
    )
    assert "| base | 25.0% | 25% | 50% |" in text and "+25.0 points" in text


class FakeLearning:
    """Stands in for LearningService: each run registers a candidate scored a bit better, promoted or not."""

    def __init__(self, versions: Any, outcomes: list[tuple[float, bool]]) -> None:
        self.versions = versions
        self.outcomes = outcomes
        self.jobs: dict[str, TrainingJob] = {}
        self.examples = 0

    async def submit(self, params: Any = None, reason: str = "manual") -> TrainingJob:
        job = TrainingJob(params=dict(params or {}), reason=reason)
        self.jobs[job.id] = job
        return job

    async def run(self, job_id: str, on_progress: Any = None) -> TrainingJob:
        job = self.jobs[job_id]
        accuracy, promote = self.outcomes.pop(0)
        serving = await self.versions.serving_version()
        self.examples += 3
        version = ModelVersion(
            id=f"v{len(self.versions.versions)}",
            base_sha256="b",
            adapter_path="a.gguf",
            metrics={
                "dataset": {"groupthink": self.examples},
                "evaluation": eval_report("candidate", accuracy),
                "serving_evaluation": eval_report(serving.id, 0.25),
            },
        )
        await self.versions.add_version(version)
        if promote:
            serving.status, version.status = VersionStatus.RETIRED, VersionStatus.PROMOTED
            await self.versions.save_versions([serving, version])
        if on_progress is not None:
            await on_progress({"stage": "train", "step": 1, "max_steps": 1, "loss": 1.0})
        job.status, job.version_id = JobStatus.COMPLETED, version.id
        job.progress = {
            "examples": self.examples,
            "promoted": promote,
            "gate": ["ok" if promote else "no gain"],
            "timings_s": {"dataset": 0.1, "train": 1.0, "evaluate": 2.0, "gate": 0.0},
        }
        return job


async def test_improve_runs_the_cycles_and_reports_every_stage(tmp_path: Path) -> None:
    from test_registry import MemoryVersions

    versions = MemoryVersions()
    base = ModelVersion(id="base", base_sha256="b", status=VersionStatus.PROMOTED)
    await versions.add_version(base)
    good = [call_text(expression="6*7"), "42"]
    worker = labeler(tmp_path, [*good, *good, *good, "1", "2", "3"])
    learning = FakeLearning(versions, [(0.5, True), (0.4, False)])
    seen: list[dict[str, Any]] = []

    async def record(update: dict[str, Any]) -> None:
        seen.append(update)

    report = await Improve(worker, learning, versions, {"note": "test"}).run(  # type: ignore[arg-type]
        2, 1, {"max_steps": 3}, record
    )
    data = report.to_dict()
    assert [c["labeling"]["attempted"] for c in data["cycles"]] == [1, 1]
    assert [c["version"] for c in data["cycles"]] == ["v1", "v2"]
    assert [c["promoted"] for c in data["cycles"]] == [True, False]
    assert data["base"]["accuracy"] == 0.25 and data["serving"]["accuracy"] == 0.5
    assert data["serving"]["version"] == "candidate" and data["gain_points"] == 25.0
    assert data["examples_gained"] == 6 and [c["examples_gained"] for c in data["cycles"]] == [3, 3]
    assert data["settings"]["note"] == "test" and data["settings"]["cycles"] == 2
    assert set(data["cycles"][0]["timings_s"]) == {"label", "dataset", "train", "evaluate", "gate"}
    assert {u["stage"] for u in seen} == {"label", "train"} and {u["cycle"] for u in seen} == {1, 2}
    assert [v["accuracy"] for v in data["versions"]] == [0.25, 0.5, 0.4]

    from agentloop.adapters.report import write_report

    files = write_report(data, tmp_path / "reports")
    assert files["chart"].read_bytes().startswith(b"\x89PNG")
    text = files["markdown"].read_text()
    assert "![accuracy per version](improve.png)" in text and "| 2 | 0 / 1 | 6 (+3) | v2 | no |" in text
    assert json.loads(files["json"].read_text())["gain_points"] == 25.0


def test_the_curriculum_is_asked_topic_by_topic() -> None:
    prompts = [PracticePrompt(f"{t}{i}", (), t) for t in "abc" for i in range(3 if t == "a" else 1)]
    assert [p.prompt for p in interleaved(prompts)] == ["a0", "b0", "c0", "a1", "a2"]

"""Labels for traffic nobody rated: GroupThink answers each unlabeled prompt (stored user prompts first, then
the bundled practice curriculum) and a consensus that reaches the threshold with clean tools is stored as a
conversation (source "groupthink") plus a ConsensusReached event; the dataset builder reads it as signal
`groupthink` with its agreement. A prompt is tried at most once per model version.

Coaching (context distillation): while labeling, the samples see a few worked demonstrations (bundled, written
here, none of them an evaluation item) as earlier turns of their conversation; the stored label holds only
the prompt and the winner's turn, so the dataset renders it with the serving prompt and the adapter learns to
do without the demonstrations what the model does with them. See ADR-0010."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from agentloop.application.groupthink import (
    STOPWORDS,
    GroupThink,
    Sample,
    adopt,
    consensus_event,
    named_in,
)
from agentloop.application.learning.evaluation import BUILTIN_TOOLS, SUITES_FOLDER, SUITES_PACKAGE
from agentloop.application.ports import ConversationStore
from agentloop.domain.events import ConsensusReached, Event
from agentloop.domain.model import Agent, Conversation, Message, ModelConfig, Role, ToolCall
from agentloop.errors import AgentLoopError, ValidationError

CURRICULUM_FILE = "curriculum.jsonl"
DEMONSTRATIONS_FILE = "demonstrations.json"
LabelProgress = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class PracticePrompt:
    prompt: str
    tools: tuple[str, ...]
    topic: str = "stored"
    agent_id: str | None = None  # a stored prompt is re-asked with the agent it was asked of


def load_curriculum(text: str | None = None) -> list[PracticePrompt]:
    """The bundled practice prompts (`evals/suites/curriculum.jsonl`: prompt, tools, topic); never an
    evaluation item (a test checks)."""
    if text is None:
        folder = resources.files(SUITES_PACKAGE).joinpath(SUITES_FOLDER)
        text = folder.joinpath(CURRICULUM_FILE).read_text(encoding="utf-8")
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            tools = tuple(sorted(data["tools"], key=_tool_rank))
            prompts.append(PracticePrompt(str(data["prompt"]), tools, str(data["topic"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValidationError(f"{CURRICULUM_FILE}:{number}: {exc}", field="curriculum") from exc
        unknown = set(tools) - set(BUILTIN_TOOLS)
        if unknown or not prompts[-1].prompt.strip():
            raise ValidationError(f"{CURRICULUM_FILE}:{number}: bad item", field="curriculum")
    return prompts


@dataclass(frozen=True)
class Demonstration:
    """A worked example shown to labeling samples: a question, the tool calls that answer it (with the
    outputs the real tools give, checked by a test) and the final answer."""

    topic: str
    question: str
    steps: tuple[tuple[ToolCall, str], ...]
    answer: str

    @property
    def tools(self) -> frozenset[str]:
        return frozenset(call.name for call, _ in self.steps)

    def messages(self) -> list[Message]:
        turn = [Message("", Role.USER, self.question)]
        for call, output in self.steps:
            turn += [
                Message("", Role.ASSISTANT, tool_call=call),
                Message("", Role.TOOL, output, tool_call=call),
            ]
        return [*turn, Message("", Role.ASSISTANT, self.answer)]


def load_demonstrations(text: str | None = None) -> list[Demonstration]:
    """The bundled coaching demonstrations (`evals/suites/demonstrations.json`)."""
    if text is None:
        folder = resources.files(SUITES_PACKAGE).joinpath(SUITES_FOLDER)
        text = folder.joinpath(DEMONSTRATIONS_FILE).read_text(encoding="utf-8")
    try:
        return [
            Demonstration(
                str(item["topic"]),
                str(item["question"]),
                tuple(
                    (
                        ToolCall(str(step["name"]), dict(step["arguments"]), id=f"demo_{n}_{i}"),
                        str(step["output"]),
                    )
                    for i, step in enumerate(item["steps"])
                ),
                str(item["answer"]),
            )
            for n, item in enumerate(json.loads(text))
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"{DEMONSTRATIONS_FILE}: {exc}", field="demonstrations") from exc


def coaching(
    question: str,
    topic: str,
    tools: Sequence[str],
    demonstrations: Sequence[Demonstration],
    limit: int,
) -> list[Demonstration]:
    """Up to `limit` demonstrations for `question`: those of its topic when there are any, else those that
    use only the offered tools (tool-less ones always qualify); the most alike in wording first (shared
    content words; file order breaks ties). Shown in reverse, the most alike nearest the question."""
    offered = set(tools)
    usable = [d for d in demonstrations if d.tools <= offered]
    pool = [d for d in usable if d.topic == topic] or usable
    words = _content_words(question)
    ranked = sorted(pool, key=lambda d: -len(words & _content_words(d.question)))  # stable sort
    return ranked[: max(limit, 0)]


def as_history(demonstrations: Sequence[Demonstration]) -> list[Message]:
    """The demonstrations as earlier turns of a conversation, the first one nearest the question."""
    return [message for demo in reversed(demonstrations) for message in demo.messages()]


def borrows(sample: Sample, question: str, demonstrations: Sequence[Demonstration]) -> bool:
    """The turn reuses a file name or quoted text of a demonstration that its own question does not name
    (listing the files answered by saving 'buy bread' to errands.txt): a copy, however many samples agree."""
    own = named_in(question)
    said = sample.says()
    return any(
        name not in own and name in said for demo in demonstrations for name in named_in(demo.question)
    )


def _content_words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text.casefold())) - STOPWORDS


def interleaved(prompts: Sequence[PracticePrompt]) -> list[PracticePrompt]:
    """One prompt of each topic in turn, so that any prefix of the curriculum covers every topic."""
    by_topic: dict[str, list[PracticePrompt]] = {}
    for prompt in prompts:
        by_topic.setdefault(prompt.topic, []).append(prompt)
    rounds = itertools.zip_longest(*by_topic.values())
    return [prompt for round_ in rounds for prompt in round_ if prompt is not None]


def _tool_rank(name: str) -> tuple[int, str]:
    # The order the evaluation (and the default agent) offers tools in, so practice prompts render alike.
    return (BUILTIN_TOOLS.index(name) if name in BUILTIN_TOOLS else len(BUILTIN_TOOLS), name)


class LabelStore(Protocol):
    async def consensus_events(self) -> list[ConsensusReached]: ...

    async def unrated_prompts(self, limit: int) -> list[PracticePrompt]: ...

    async def add_events(self, events: Sequence[Event]) -> None: ...


class AgentStore(ConversationStore, Protocol):
    async def get_agent_by_name(self, name: str) -> Agent | None: ...

    async def create_agent(self, agent: Agent) -> None: ...


@dataclass(frozen=True)
class LabelingReport:
    attempted: int = 0
    labeled: int = 0
    examples: int = 0  # model calls in the labeled turns
    mean_agreement: float = 0.0
    seconds: float = 0.0
    topics: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "labeled": self.labeled,
            "examples": self.examples,
            "mean_agreement": round(self.mean_agreement, 4),
            "seconds": round(self.seconds, 2),
            "topics": self.topics,
        }


class Labeler:
    def __init__(
        self,
        groupthink: GroupThink,
        labels: LabelStore,
        conversations: AgentStore,
        curriculum: Sequence[PracticePrompt] | None = None,
        max_tokens: int = 256,
        max_steps: int = 5,
        demonstrations: Sequence[Demonstration] | None = None,
        coaching_limit: int = 3,
    ) -> None:
        self.groupthink = groupthink
        self.labels = labels
        self.conversations = conversations
        self.curriculum = list(load_curriculum() if curriculum is None else curriculum)
        self.max_tokens = max_tokens
        self.max_steps = max_steps
        self.demonstrations = list(load_demonstrations() if demonstrations is None else demonstrations)
        self.coaching_limit = coaching_limit

    async def candidates(self, model_version: str) -> list[PracticePrompt]:
        """Stored prompts then the curriculum, never-tried first, minus those tried on this version."""
        votes = await self.labels.consensus_events()
        tried_now = {(v.prompt, v.model_version) for v in votes}
        tried = {v.prompt for v in votes}
        pool = [*await self.labels.unrated_prompts(200), *interleaved(self.curriculum)]
        unique = list({p.prompt: p for p in reversed(pool)}.values())[::-1]
        fresh = [p for p in unique if (p.prompt, model_version) not in tried_now]
        return [p for p in fresh if p.prompt not in tried] + [p for p in fresh if p.prompt in tried]

    async def label(self, limit: int, on_progress: LabelProgress | None = None) -> LabelingReport:
        """Put up to `limit` prompts through GroupThink; store the ones that pass as labeled conversations."""
        started = time.perf_counter()
        chosen = (await self.candidates(self.groupthink.engine.model_version))[: max(limit, 0)]
        agreements: list[float] = []
        topics: dict[str, dict[str, int]] = {}
        labeled = examples = 0
        for number, prompt in enumerate(chosen, start=1):
            steps = await self.label_one(prompt)
            counts = topics.setdefault(prompt.topic, {"attempted": 0, "labeled": 0})
            counts["attempted"] += 1
            if steps is not None:
                agreements.append(steps[1])
            if steps is not None and steps[0] > 0:
                labeled += 1
                examples += steps[0]
                counts["labeled"] += 1
            if on_progress is not None:
                await on_progress({"stage": "label", "step": number, "max_steps": len(chosen)})
        return LabelingReport(
            attempted=len(chosen),
            labeled=labeled,
            examples=examples,
            mean_agreement=sum(agreements) / len(agreements) if agreements else 0.0,
            seconds=time.perf_counter() - started,
            topics=topics,
        )

    async def label_one(self, prompt: PracticePrompt) -> tuple[int, float] | None:
        """(model calls labeled, agreement); 0 calls when the vote did not pass; None when no sample ran."""
        agent = await self._agent(prompt)
        try:
            offered = prompt.tools or agent.allowed_tools
            shown = coaching(prompt.prompt, prompt.topic, offered, self.demonstrations, self.coaching_limit)
            consensus = await self.groupthink.consensus(agent, as_history(shown), prompt.prompt)
        except AgentLoopError:
            return None
        try:
            config = self.groupthink.config
            passed = consensus.passes(config.threshold, config.min_support)
            if not passed or borrows(consensus.winner, prompt.prompt, shown):
                await self.labels.add_events([consensus_event(None, None, consensus, prompt.prompt, False)])
                return 0, consensus.agreement
            conversation = Conversation(agent.id, title=prompt.prompt[:80], source="groupthink")
            await self.conversations.create_conversation(conversation)
            messages = adopt(consensus.winner, conversation.id)
            event = consensus_event(conversation.id, messages[-1], consensus, prompt.prompt, True)
            await self.conversations.append(conversation.id, messages, [event])
            return sum(1 for m in messages if m.role == Role.ASSISTANT), consensus.agreement
        finally:
            self.groupthink.discard(consensus)

    async def _agent(self, prompt: PracticePrompt) -> Agent:
        """The stored prompt's own agent, or a practice agent offering exactly the prompt's tools (the same
        prompt the evaluation renders for such an item, so training matches serving)."""
        if prompt.agent_id is not None:
            return await self.conversations.get_agent(prompt.agent_id)
        name = "practice: " + ", ".join(prompt.tools)
        existing = await self.conversations.get_agent_by_name(name)
        if existing is not None:
            return existing
        agent = Agent(
            name,
            ModelConfig(max_tokens=self.max_tokens),
            allowed_tools=prompt.tools,
            max_steps=self.max_steps,
        )
        await self.conversations.create_agent(agent)
        return agent


__all__ = [
    "CURRICULUM_FILE",
    "DEMONSTRATIONS_FILE",
    "Demonstration",
    "LabelStore",
    "Labeler",
    "LabelingReport",
    "PracticePrompt",
    "as_history",
    "borrows",
    "coaching",
    "load_curriculum",
    "load_demonstrations",
]

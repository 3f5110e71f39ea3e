"""GroupThink: several samples of the agent answer the same prompt, each running its own tools, and vote.

Each sample's turn is reduced to a canonical key before the vote: its distinct tool calls (names plus
arguments with keys sorted, numbers written one way, whitespace and case folded) and the claim its answer
makes (the numbers and content words of the answer that the question did not already contain). Samples whose
tools failed count less (`failed_tool_weight`), and so do ungrounded ones (the answer contradicts the number
its last tool returned, or states a number neither the question nor a tool gave); a sample that crashed
counts nothing. The key with the most weight wins (ties: more samples, then the earliest sample) and speaks
through its earliest exemplary member; the agreement is the winner's share of all the weight; every other
key is reported as dissent. See ADR-0010.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agentloop.application.agent import AgentService, ToolCalled, ToolReturned, TurnFinished
from agentloop.application.gather import bounded_gather
from agentloop.application.learning.evaluation import MemoryStore
from agentloop.application.ports import ConversationStore, InferenceEngine
from agentloop.application.tools import ToolRegistry
from agentloop.domain.events import ConsensusReached
from agentloop.domain.model import (
    Agent,
    Conversation,
    Message,
    ModelConfig,
    ToolCall,
    ToolResult,
    new_id,
)
from agentloop.errors import AgentLoopError, ValidationError

Step = tuple[ToolCall, ToolResult]

_NUMBER = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])|(?<![\w.])-?\.\d+"
)
# The python sandbox reports a crashed script as output ending in "[exit code N]" / "[killed by signal S]"
# (adapters/tools/sandbox.py) rather than as a failed call; for a vote that is a failed tool run.
_FAILED_RUN = re.compile(r"\[(?:exit code -?[1-9]\d*|killed by signal \w+)\]\s*$")
_SPACE_AROUND_SYMBOL = re.compile(r"\s*([^\w\s])\s*")
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
# Function words carry no claim: "The answer is 42." and "42" say the same thing.
_FUNCTION_WORDS = """
a an and answer are as at be been being by can could did do does equals equal for from has have i in into is
it its it's let me my of on or result so that the their then there these this those to total was were which
will with you your yes ok okay sure here value gives get got
"""
STOPWORDS = frozenset(_FUNCTION_WORDS.split())
# What a question names that a turn must act on: file names ("notes/week1.txt") and quoted text ('tea').
_FILE_NAME = re.compile(r"[\w/-]*\w\.[A-Za-z][A-Za-z0-9]{1,4}\b")
# A parenthesised remark ("(1 to 366)"), not a parenthesised operand ("(23 + 17) * 13").
_REMARK = re.compile(r"\([^()+\-*/%^]*\)")
_QUOTED = re.compile(r"(?<!\w)'([^']+)'(?!\w)|(?<!\w)\"([^\"]+)\"(?!\w)")


# ----------------------------------------------------------------------------------------------------------
# canonicalisation
# ----------------------------------------------------------------------------------------------------------


def canonical_number(text: str) -> str:
    """One spelling per number: "7,006,652", "7006652.0" and "7.006652e6" all read "7006652"."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation as exc:
        raise ValidationError(f"not a number: {text!r}", field="number") from exc
    if not value.is_finite():
        raise ValidationError(f"not a finite number: {text!r}", field="number")
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def canonical_text(text: str) -> str:
    """Unicode-normalised, case-folded, numbers spelled one way, whitespace collapsed and dropped around
    symbols ("1234 * 5678" == "1234*5678"), closing punctuation removed."""
    text = _folded(text)
    text = _NUMBER.sub(lambda match: canonical_number(match.group()), text)
    text = " ".join(text.split())
    text = _SPACE_AROUND_SYMBOL.sub(r"\1", text)
    # Joining across a dropped space can put a combining mark after a letter: compose once more.
    return unicodedata.normalize("NFKC", text).strip().rstrip(".!?;:")


def canonical_value(value: Any) -> Any:
    """Arguments by meaning: keys sorted, numbers (and numeric strings) spelled one way, text canonical."""
    if isinstance(value, Mapping):
        return {str(key): canonical_value(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical_value(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return canonical_number(repr(value)) if _finite(value) else repr(value)
    return canonical_text(str(value))


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def canonical_call(call: ToolCall) -> str:
    return json.dumps([call.name, canonical_value(call.arguments)], sort_keys=True, ensure_ascii=False)


def claim_of(answer: str, question: str = "") -> tuple[str, ...]:
    """What an answer asserts: its numbers and content words that the question did not contain, sorted. An
    answer that only repeats the question (or is only function words) is its whole canonical text."""
    claim = _added(answer, question)
    return tuple(claim) if claim else (canonical_text(answer),)


def adds_to(answer: str, question: str) -> bool:
    """False when the answer only restates the question ("2022-11-11 is 2023-01-01."): no claim to learn."""
    return bool(_added(answer, question))


def _added(answer: str, question: str) -> list[str]:
    asked = set(_tokens(question))
    return sorted({token for token in _tokens(answer) if token not in asked and token not in STOPWORDS})


def _folded(text: str) -> str:
    # Case folding can leave a decomposed sequence ("Á" -> "a" + U+0301): normalise again after it.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _numbers(text: str) -> set[str]:
    return {canonical_number(match) for match in _NUMBER.findall(_folded(text))}


def _tokens(text: str) -> list[str]:
    text = _folded(text)
    numbers = [canonical_number(match) for match in _NUMBER.findall(text)]
    words = _WORD.findall(_NUMBER.sub(" ", text))
    return numbers + words


def vote_key(steps: Sequence[Step], answer: str | None, question: str = "") -> str:
    """The canonical form of one sample's turn: its distinct calls in order and the claim of its answer (a
    call repeated word for word adds nothing: the sample says the same as one that made it once)."""
    calls = list(dict.fromkeys(canonical_call(call) for call, _ in steps))
    claim = None if answer is None else list(claim_of(answer, question))
    return json.dumps({"calls": calls, "claim": claim}, sort_keys=True, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------------
# the vote
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One sample's turn: its tool steps, final answer and the messages it produced (user message first)."""

    index: int
    steps: tuple[Step, ...]
    answer: str | None
    messages: tuple[Message, ...] = ()
    persona: str | None = None
    seed: int | None = None
    workspace: Path | None = None
    error: str | None = None

    @property
    def tools_ok(self) -> bool:
        return all(ran_cleanly(result) for _, result in self.steps)

    @property
    def repeats(self) -> bool:
        """The same call twice in one turn: the model lost track (the agent loop then forces an answer)."""
        calls = [canonical_call(call) for call, _ in self.steps]
        return len(calls) != len(set(calls))

    def collapsed(self) -> Sample:
        """The turn without its word-for-word repeated calls (each with its result): what the model should
        have done, call once and answer from the result. The first call and its result stay."""
        seen: set[str] = set()
        dropped: set[str] = set()
        for call, _ in self.steps:
            key = canonical_call(call)
            if key in seen:
                dropped.add(call.id)
            seen.add(key)
        if not dropped:
            return self
        return replace(
            self,
            steps=tuple(step for step in self.steps if step[0].id not in dropped),
            messages=tuple(m for m in self.messages if _call_id(m) not in dropped),
        )

    @property
    def clean(self) -> bool:
        """Finished with an answer and every tool call ran without error."""
        return self.error is None and self.answer is not None and self.tools_ok

    def grounded(self, question: str = "") -> bool:
        """Every number the answer states came from the question or a tool's output, and when the last tool
        returned one number (the calculator, a script printing its result) the answer states it: an answer
        that contradicts its own observation ("4321 * 8765 = 1000...") or brings a number from nowhere ("31
        (17 * 29) = 31.") is a guess, whatever the vote. A turn without an answer has nothing to check."""
        if self.answer is None:
            return True
        stated = _numbers(self.answer)
        seen = _numbers(question).union(*(_numbers(result.output) for _, result in self.steps))
        if not stated <= seen:
            return False
        returned = self.steps[-1][1].output.strip() if self.steps else ""
        return not _NUMBER.fullmatch(returned) or canonical_number(returned) in stated

    def uses_question(self, question: str) -> bool:
        """The turn acts on what the question names: each file name in it is an argument of a call, each
        quoted text is in a call's arguments or the answer, and a turn that called tools passed them every
        number the question gives outside a parenthesised remark ("(1 to 366)"; "(23 + 17)" is an operand).
        Catches the consensus a weak model reaches by copying: writing drink.txt for "Save 'tea' to
        drinks.txt", or counting the days from 2022-11-11 to itself."""
        folded = canonical_text(self._arguments())
        if any(canonical_text(name) not in folded for name in _FILE_NAME.findall(question)):
            return False
        said = self.says()
        quoted = [first or second for first, second in _QUOTED.findall(question)]
        if any(canonical_text(text) not in said for text in quoted):
            return False
        return not self.steps or _numbers(_REMARK.sub(" ", question)) <= _numbers(self._arguments())

    def says(self) -> str:
        """Everything the turn put into words: its call arguments and its answer, canonical."""
        return f"{canonical_text(self._arguments())} {canonical_text(self.answer or '')}"

    def _arguments(self) -> str:
        """Every scalar of every call's arguments, space-separated, as written."""
        return " ".join(_strings(call.arguments) for call, _ in self.steps)


def named_in(text: str) -> set[str]:
    """The file names and quoted texts `text` names, canonical: what a turn answering it must act on."""
    quoted = [first or second for first, second in _QUOTED.findall(text)]
    return {canonical_text(name) for name in [*_FILE_NAME.findall(text), *quoted]}


def _reports_result(sample: Sample) -> bool:
    returned = canonical_text(sample.steps[-1][1].output) if sample.steps else ""
    return bool(returned) and returned in canonical_text(sample.answer or "")


def _strings(value: Any) -> str:
    """Every scalar inside a call's arguments, as text, space-separated."""
    if isinstance(value, Mapping):
        return " ".join(_strings(item) for item in value.values())
    if isinstance(value, list | tuple):
        return " ".join(_strings(item) for item in value)
    return str(value)


def _call_id(message: Message) -> str | None:
    if message.tool_call is not None:
        return message.tool_call.id
    return message.tool_result.call_id if message.tool_result is not None else None


def ran_cleanly(result: ToolResult) -> bool:
    return result.ok and not _FAILED_RUN.search(result.output)


@dataclass(frozen=True)
class Vote:
    key: str
    samples: tuple[int, ...]
    weight: float
    answer: str | None
    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class Consensus:
    winner: Sample
    agreement: float
    votes: tuple[Vote, ...]  # the winning vote first
    samples: tuple[Sample, ...]
    question: str = ""

    @property
    def dissent(self) -> tuple[Vote, ...]:
        return self.votes[1:]

    @property
    def support(self) -> int:
        """How many samples gave the winning answer."""
        return len(self.votes[0].samples)

    def passes(self, threshold: float, min_support: int = 1) -> bool:
        """Good enough to train on: agreement reaches the threshold, enough samples back it (capped at the
        number of samples) and the winner ran cleanly."""
        enough = self.support >= min(min_support, len(self.samples))
        return self.teachable and enough and self.agreement >= threshold

    @property
    def teachable(self) -> bool:
        """The winner is exemplary: it ran cleanly, never repeated a call, states what its tool returned and
        its answer adds to the question."""
        return exemplary(self.winner, self.question)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.winner.answer,
            "agreement": round(self.agreement, 4),
            "support": self.support,
            "winner": self.winner.index,
            "votes": [_vote_dict(vote) for vote in self.votes],
            "dissent": [_vote_dict(vote) for vote in self.dissent],
        }


def _vote_dict(vote: Vote) -> dict[str, Any]:
    return {
        "samples": list(vote.samples),
        "weight": round(vote.weight, 4),
        "answer": vote.answer,
        "calls": [{"name": call.name, "arguments": call.arguments} for call in vote.calls],
    }


def exemplary(sample: Sample, question: str) -> bool:
    """A turn fit to learn from: clean, no repeated call, grounded, acting on what the question names, and
    an answer that says something (beyond the question, or what its last tool returned: a file read back
    may say what the question wrote)."""
    answered = sample.answer is not None and (adds_to(sample.answer, question) or _reports_result(sample))
    acted = sample.grounded(question) and sample.uses_question(question)
    return sample.clean and not sample.repeats and acted and answered


def sample_weight(sample: Sample, failed_tool_weight: float, question: str = "") -> float:
    """1 for a clean, grounded turn; `failed_tool_weight` when a tool failed or the answer is not grounded
    (both: its square); 0 for a sample that crashed or never answered."""
    if sample.error is not None or sample.answer is None:
        return 0.0
    weight = 1.0 if sample.tools_ok else failed_tool_weight
    return weight if sample.grounded(question) else weight * failed_tool_weight


def vote(samples: Sequence[Sample], question: str = "", failed_tool_weight: float = 0.25) -> Consensus:
    """Majority vote over canonical turns, weighted by tool success; deterministic tie-breaks."""
    if not samples:
        raise ValidationError("a vote needs at least one sample", field="samples")
    if not 0.0 <= failed_tool_weight <= 1.0:
        raise ValidationError("failed_tool_weight must be between 0 and 1", field="failed_tool_weight")
    groups: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.index):
        groups.setdefault(vote_key(sample.steps, sample.answer, question), []).append(sample)
    votes = [
        Vote(
            key,
            tuple(s.index for s in members),
            sum(sample_weight(s, failed_tool_weight, question) for s in members),
            members[0].answer,
            tuple(call for call, _ in members[0].steps),
        )
        for key, members in groups.items()
    ]
    votes.sort(key=lambda v: (-v.weight, -len(v.samples), v.samples[0]))
    total = sum(v.weight for v in votes)
    # The winning vote speaks through its best member: the earliest exemplary one (repeated calls collapsed),
    # else the earliest.
    members = groups[votes[0].key]
    collapsed = [s.collapsed() for s in members]
    winner = next((s for s in collapsed if exemplary(s, question)), members[0])
    agreement = votes[0].weight / total if total > 0 else 0.0
    ordered = tuple(sorted(samples, key=lambda s: s.index))
    return Consensus(winner, agreement, tuple(votes), ordered, question)


# ----------------------------------------------------------------------------------------------------------
# sampling through the real agent turn
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupThinkConfig:
    samples: int = 3
    temperature: float = 0.3
    top_p: float = 0.95
    max_tokens: int | None = None  # None: the agent's own
    personas: tuple[str, ...] = ()  # appended to the system prompt of sample i % len(personas)
    failed_tool_weight: float = 0.25
    threshold: float = 0.6
    # A lone clean sample beside failed ones would otherwise pass: one sample is not a consensus.
    min_support: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValidationError("groupthink needs at least one sample", field="samples")
        if self.min_support < 1:
            raise ValidationError("min_support must be at least 1", field="min_support")
        if not 0.0 < self.threshold <= 1.0:
            raise ValidationError("threshold must be in (0, 1]", field="threshold")
        ModelConfig(temperature=self.temperature, top_p=self.top_p)  # validates the ranges


@dataclass
class GroupThink:
    """Runs N samples of an agent's turn (own seed, temperature, persona and scratch workspace) and votes."""

    engine: InferenceEngine
    tools: ToolRegistry
    workspace_root: Path
    config: GroupThinkConfig = field(default_factory=GroupThinkConfig)
    single_line_answers: bool = True
    # Samples in flight at once: the embedded engine decodes up to AGENTLOOP_MAX_PARALLEL sequences in one
    # batch, so N samples side by side cost little more than one.
    concurrency: int = 1

    async def consensus(self, agent: Agent, history: Sequence[Message], text: str) -> Consensus:
        """Sample the turn N times and vote; raises the first error when no sample finished at all."""
        samples = await bounded_gather(
            [
                functools.partial(self.sample, agent, history, text, index)
                for index in range(self.config.samples)
            ],
            self.concurrency,
        )
        if all(sample.error is not None for sample in samples):
            raise AgentLoopError(f"no groupthink sample finished: {samples[0].error}")
        return vote(samples, text, self.config.failed_tool_weight)

    async def sample(self, agent: Agent, history: Sequence[Message], text: str, index: int) -> Sample:
        persona = self.config.personas[index % len(self.config.personas)] if self.config.personas else None
        seed = self.config.seed + index
        store = MemoryStore()
        sampler = self._sampler(agent, persona)
        store.add_agent(sampler)
        conversation = Conversation(sampler.id, messages=list(history), source="groupthink")
        await store.create_conversation(conversation)
        service = AgentService(
            self.engine,
            store,
            self.tools,
            self.workspace_root,
            single_line_answers=self.single_line_answers,
            seed=seed,
        )
        calls: dict[str, ToolCall] = {}
        steps: list[Step] = []
        answer: str | None = None
        error: str | None = None
        try:
            async for event in service.run_turn(conversation.id, text):
                if isinstance(event, ToolCalled):
                    calls[event.call.id] = event.call
                elif isinstance(event, ToolReturned):
                    steps.append((calls[event.result.call_id], event.result))
                elif isinstance(event, TurnFinished):
                    answer = event.message.content
        except AgentLoopError as exc:  # one failing sample (context overflow) must not sink the vote
            error = f"{type(exc).__name__}: {exc}"
        produced = store.conversations[conversation.id].messages[len(history) :]
        workspace = self.workspace_root / conversation.id
        return Sample(index, tuple(steps), answer, tuple(produced), persona, seed, workspace, error)

    def _sampler(self, agent: Agent, persona: str | None) -> Agent:
        config = agent.model_config
        system = agent.system_prompt if persona is None else f"{agent.system_prompt} {persona}".strip()
        return Agent(
            f"groupthink {agent.name}",
            ModelConfig(
                temperature=self.config.temperature,
                max_tokens=self.config.max_tokens or config.max_tokens,
                top_p=self.config.top_p,
            ),
            allowed_tools=agent.allowed_tools,
            system_prompt=system,
            max_steps=agent.max_steps,
        )

    def discard(self, consensus: Consensus) -> None:
        """Remove the samples' scratch workspaces."""
        for sample in consensus.samples:
            if sample.workspace is not None:
                shutil.rmtree(sample.workspace, ignore_errors=True)


def adopt(sample: Sample, conversation_id: str) -> list[Message]:
    """The winner's messages as messages of the real conversation (new ids: a sample is a draft)."""
    return [replace(m, conversation_id=conversation_id, id=new_id()) for m in sample.messages]


@dataclass(frozen=True)
class GroupThinkAnswer:
    conversation_id: str
    message: Message  # the stored final answer
    consensus: Consensus
    labeled: bool


class GroupThinkService:
    """GroupThink as an inference mode: the consensus turn is stored in the conversation (with the winner's
    workspace files) and, when it passes the threshold, recorded as a training label."""

    def __init__(self, groupthink: GroupThink, store: ConversationStore) -> None:
        self.groupthink = groupthink
        self.store = store

    async def answer(self, conversation_id: str, text: str) -> GroupThinkAnswer:
        if not text.strip():
            raise ValidationError("message must not be empty", field="content")
        conversation = await self.store.get_conversation(conversation_id)
        agent = await self.store.get_agent(conversation.agent_id)
        consensus = await self.groupthink.consensus(agent, conversation.messages, text)
        try:
            return await self.record(conversation, consensus, text)
        finally:
            self.groupthink.discard(consensus)

    async def record(self, conversation: Conversation, consensus: Consensus, text: str) -> GroupThinkAnswer:
        """Store the winner's turn in `conversation` with a ConsensusReached event."""
        winner = consensus.winner
        if winner.answer is None:
            raise AgentLoopError(f"the winning groupthink sample did not answer: {winner.error}")
        messages = adopt(winner, conversation.id)
        if winner.workspace is not None and winner.workspace.is_dir():
            shutil.copytree(
                winner.workspace, self.groupthink.workspace_root / conversation.id, dirs_exist_ok=True
            )
        config = self.groupthink.config
        labeled = consensus.passes(config.threshold, config.min_support)
        event = consensus_event(conversation.id, messages[-1], consensus, text, labeled)
        await self.store.append(conversation.id, messages, [event])
        return GroupThinkAnswer(conversation.id, messages[-1], consensus, labeled)


def consensus_event(
    conversation_id: str | None, final: Message | None, consensus: Consensus, prompt: str, labeled: bool
) -> ConsensusReached:
    return ConsensusReached(
        conversation_id=conversation_id,
        message_id=final.id if final is not None else None,
        prompt=prompt,
        agreement=consensus.agreement,
        samples=len(consensus.samples),
        labeled=labeled,
        model_version=_version_of(consensus.winner),
    )


def _version_of(sample: Sample) -> str:
    versions = [m.model_version for m in sample.messages if m.model_version]
    return versions[-1] if versions else "unknown"


__all__ = [
    "Consensus",
    "GroupThink",
    "GroupThinkAnswer",
    "GroupThinkConfig",
    "GroupThinkService",
    "Sample",
    "Vote",
    "adds_to",
    "adopt",
    "canonical_call",
    "canonical_number",
    "canonical_text",
    "canonical_value",
    "claim_of",
    "consensus_event",
    "exemplary",
    "named_in",
    "vote",
    "vote_key",
]

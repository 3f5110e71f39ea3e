"""Training examples from stored conversations.

A turn is one user message and the model calls that followed it, up to the final answer. Turns whose
QualitySignals are usable become examples, one per model call: the prompt is exactly what the engine was given
at that step (`render_prompt`, ADR-0001) and the completion is the model turn in the format the engine parses.
Examples are masked, de-duplicated, split by hash and written as JSONL with a manifest; only the writing
touches the disk.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import jsonschema

from agentloop.application.learning.masking import mask
from agentloop.application.prompt import END, render_prompt, render_tool_call
from agentloop.application.tools import ToolSchema
from agentloop.domain.learning import Feedback, QualitySignals, Rating
from agentloop.domain.model import Conversation, Message, Role, ToolCall, ToolResult, utcnow
from agentloop.errors import ValidationError

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
MANIFEST_FILE = "manifest.json"
# A model turn renders as `<start_of_turn>model\n{text}\n<end_of_turn>\n` and the prompt ends after "model\n".
COMPLETION_END = f"\n{END}"


class Signal(StrEnum):
    """Why an example was selected; earlier members are stronger evidence."""

    CORRECTED = "corrected"
    RATED_UP = "rated_up"
    GROUPTHINK = "groupthink"
    TOOL_SUCCESS = "tool_success"


STRENGTH = {signal: rank for rank, signal in enumerate(Signal)}


@dataclass(frozen=True)
class ConversationForTraining:
    """A stored conversation with what is known about it. `tools` in the order the agent offered them."""

    conversation: Conversation
    system_prompt: str
    tools: Sequence[ToolSchema]
    feedback: Sequence[Feedback] = ()
    groupthink: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingExample:
    prompt: str
    completion: str
    signal: Signal
    conversation_id: str
    message_id: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.prompt, self.completion]).encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {
            "prompt": self.prompt,
            "completion": self.completion,
            "signal": self.signal.value,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
        }


@dataclass(frozen=True)
class Turn:
    """`messages[start]` is the user message; the turn runs to `messages[end - 1]`, its final answer."""

    messages: Sequence[Message]
    start: int
    end: int

    @property
    def span(self) -> Sequence[Message]:
        return self.messages[self.start : self.end]

    @property
    def final(self) -> Message:
        return self.messages[self.end - 1]

    def model_steps(self) -> list[int]:
        return [i for i in range(self.start, self.end) if self.messages[i].role == Role.ASSISTANT]

    def results(self) -> dict[str, ToolResult]:
        return {m.tool_result.call_id: m.tool_result for m in self.span if m.tool_result is not None}


@dataclass(frozen=True)
class DatasetManifest:
    content_hash: str
    train: int
    validation: int
    duplicates: int
    signals: dict[str, int]
    created_at: datetime

    @property
    def total(self) -> int:
        return self.train + self.validation

    def to_dict(self) -> dict[str, Any]:
        return {
            "content_hash": self.content_hash,
            "total": self.total,
            "train": self.train,
            "validation": self.validation,
            "duplicates": self.duplicates,
            "signals": self.signals,
            "created_at": self.created_at.isoformat(),
            "files": {"train": TRAIN_FILE, "validation": VALIDATION_FILE},
        }


@dataclass(frozen=True)
class Dataset:
    train: list[TrainingExample]
    validation: list[TrainingExample]
    manifest: DatasetManifest


def split_turns(conversation: Conversation) -> list[Turn]:
    """The complete turns of a conversation: a user message up to the answer that ends it."""
    messages = conversation.messages
    starts = [i for i, m in enumerate(messages) if m.role == Role.USER] + [len(messages)]
    turns = []
    for start, following in itertools.pairwise(starts):
        answers = [i for i in range(start + 1, following) if _is_answer(messages[i])]
        if answers:
            turns.append(Turn(messages, start, answers[-1] + 1))
    return turns


def _is_answer(message: Message) -> bool:
    return message.role == Role.ASSISTANT and message.tool_call is None


def fits_schema(call: ToolCall, tools: Sequence[ToolSchema]) -> bool:
    """True when the call names an offered tool and its arguments validate against that tool's schema."""
    schema = next((tool.parameters for tool in tools if tool.name == call.name), None)
    return schema is not None and jsonschema.Draft202012Validator(schema).is_valid(call.arguments)


def turn_signals(
    turn: Turn,
    feedback: Sequence[Feedback],
    tools: Sequence[ToolSchema],
    groupthink: Mapping[str, float] | None = None,
) -> QualitySignals:
    """Rating and correction from feedback, tool and schema health from the steps, groupthink as given."""
    mine = _feedback_for(turn, feedback)
    rated = [f for f in mine if f.rating is not None]
    on_final = [f for f in rated if f.message_id == turn.final.id]
    calls = [m.tool_call for m in turn.span if m.role == Role.ASSISTANT and m.tool_call is not None]
    results = list(turn.results().values())
    return QualitySignals(
        rating=(on_final or rated)[-1].rating if rated else None,
        corrected=_correction(mine) is not None,
        tools_ok=all(r.ok for r in results) if results else None,
        schema_valid=all(fits_schema(c, tools) for c in calls) if calls else None,
        groupthink_agreement=_agreement(turn, groupthink or {}),
    )


def _feedback_for(turn: Turn, feedback: Sequence[Feedback]) -> list[Feedback]:
    ids = {m.id for m in turn.span}
    return sorted((f for f in feedback if f.message_id in ids), key=lambda f: f.created_at)


def _correction(feedback: Sequence[Feedback]) -> Feedback | None:
    corrections = [f for f in feedback if f.correction is not None or f.correction_call is not None]
    return corrections[-1] if corrections else None


def _agreement(turn: Turn, groupthink: Mapping[str, float]) -> float | None:
    if turn.final.id in groupthink:
        return groupthink[turn.final.id]
    known = [groupthink[m.id] for m in turn.span if m.id in groupthink]
    return max(known) if known else None


def signal_of(signals: QualitySignals) -> Signal:
    if signals.corrected:
        return Signal.CORRECTED
    if signals.rating == Rating.UP:
        return Signal.RATED_UP
    if (signals.groupthink_agreement or 0.0) > 0.0:
        return Signal.GROUPTHINK
    return Signal.TOOL_SUCCESS


def completion_text(message: Message) -> str:
    """The model turn as the engine parses it: the canonical call or the answer text, then end of turn."""
    body = render_tool_call(message.tool_call) if message.tool_call else message.content
    return body + COMPLETION_END


def turn_examples(source: ConversationForTraining, turn: Turn) -> list[TrainingExample]:
    """One example per model call of a usable turn, corrections applied; [] when the turn is not usable."""
    signals = turn_signals(turn, source.feedback, source.tools, source.groupthink)
    if not signals.usable:
        return []
    signal = signal_of(signals)
    correction = _correction(_feedback_for(turn, source.feedback))
    steps = turn.model_steps()
    if correction is not None and correction.correction_call is not None:
        # The call replaces the turn's first model call; what followed it answered a different call.
        taught = Message(turn.final.conversation_id, Role.ASSISTANT, tool_call=correction.correction_call)
        return [_example(source, turn, steps[0], taught, signal)]
    results = turn.results()
    examples = []
    for index in steps:
        message = turn.messages[index]
        if message.tool_call is not None:
            result = results.get(message.tool_call.id)
            if result is None or not result.ok or not fits_schema(message.tool_call, source.tools):
                continue
        elif correction is not None and correction.correction is not None:
            message = replace(message, content=correction.correction)
        examples.append(_example(source, turn, index, message, signal))
    return examples


def _example(
    source: ConversationForTraining, turn: Turn, index: int, taught: Message, signal: Signal
) -> TrainingExample:
    prompt = render_prompt(source.system_prompt, source.tools, turn.messages[:index])
    return TrainingExample(
        prompt,
        completion_text(taught),
        signal,
        source.conversation.id,
        turn.messages[index].id,
    )


def examples_from(sources: Iterable[ConversationForTraining]) -> list[TrainingExample]:
    return [
        example
        for source in sources
        for turn in split_turns(source.conversation)
        for example in turn_examples(source, turn)
    ]


def masked(example: TrainingExample) -> TrainingExample:
    return replace(example, prompt=mask(example.prompt), completion=mask(example.completion))


def deduplicate(examples: Iterable[TrainingExample]) -> tuple[list[TrainingExample], int]:
    """Unique examples in first-seen order, each keeping its strongest signal; and how many were dropped."""
    unique: dict[str, TrainingExample] = {}
    seen = 0
    for example in examples:
        seen += 1
        kept = unique.get(example.digest)
        if kept is None or STRENGTH[example.signal] < STRENGTH[kept.signal]:
            unique[example.digest] = example
    return list(unique.values()), seen - len(unique)


def split(
    examples: Sequence[TrainingExample], validation_fraction: float
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Deterministic by content hash, so an example keeps its side as the dataset grows."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValidationError("validation_fraction must be in [0, 1)", field="validation_fraction")
    ranked = sorted(examples, key=_bucket)
    chosen = {e.digest for e in examples if _bucket(e) < validation_fraction}
    if validation_fraction > 0 and len(examples) >= 2:
        if not chosen:
            chosen = {ranked[0].digest}
        if len(chosen) == len(examples):
            chosen.discard(ranked[-1].digest)
    train = [e for e in examples if e.digest not in chosen]
    return train, [e for e in examples if e.digest in chosen]


def _bucket(example: TrainingExample) -> float:
    return int(example.digest[:16], 16) / 16**16


def content_hash(examples: Iterable[TrainingExample]) -> str:
    return hashlib.sha256("\n".join(sorted(e.digest for e in examples)).encode()).hexdigest()


def plan_dataset(
    sources: Iterable[ConversationForTraining],
    *,
    validation_fraction: float = 0.1,
    extra: Iterable[TrainingExample] = (),
    now: datetime | None = None,
) -> Dataset:
    """Select, render, mask (before de-duplication: examples differing only in a secret merge), split."""
    examples, duplicates = deduplicate(masked(e) for e in [*examples_from(sources), *extra])
    train, validation = split(examples, validation_fraction)
    counts = Counter(e.signal for e in examples)
    manifest = DatasetManifest(
        content_hash=content_hash(examples),
        train=len(train),
        validation=len(validation),
        duplicates=duplicates,
        signals={signal.value: counts[signal] for signal in Signal},
        created_at=now or utcnow(),
    )
    return Dataset(train, validation, manifest)


def write_dataset(dataset: Dataset, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, examples in ((TRAIN_FILE, dataset.train), (VALIDATION_FILE, dataset.validation)):
        lines = (json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples)
        (out_dir / name).write_text("".join(lines), encoding="utf-8")
    manifest = json.dumps(dataset.manifest.to_dict(), indent=2, sort_keys=True)
    (out_dir / MANIFEST_FILE).write_text(manifest + "\n", encoding="utf-8")


def build_dataset(
    sources: Iterable[ConversationForTraining],
    out_dir: Path,
    *,
    validation_fraction: float = 0.1,
    extra: Iterable[TrainingExample] = (),
    now: datetime | None = None,
) -> DatasetManifest:
    """Build the training set from conversations (plus `extra` examples) and write it to `out_dir`."""
    dataset = plan_dataset(sources, validation_fraction=validation_fraction, extra=extra, now=now)
    write_dataset(dataset, out_dir)
    return dataset.manifest


__all__ = [
    "COMPLETION_END",
    "ConversationForTraining",
    "Dataset",
    "DatasetManifest",
    "Signal",
    "TrainingExample",
    "Turn",
    "build_dataset",
    "completion_text",
    "examples_from",
    "fits_schema",
    "plan_dataset",
    "signal_of",
    "split_turns",
    "turn_examples",
    "turn_signals",
    "write_dataset",
]

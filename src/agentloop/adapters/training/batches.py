"""Training data without torch: read prompt/completion JSONL, mask the prompt out of the loss, and group
examples of similar length into batches so little compute goes into padding."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agentloop.adapters.training.spec import TrainingError

IGNORE_INDEX = -100  # the label torch's cross-entropy skips: no loss on prompt or padding tokens
MEGA_BATCH = 16  # batches per sorted window: large enough to group lengths, small enough to stay random


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Batch:
    indices: tuple[int, ...]
    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    labels: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(map(sum, self.attention_mask))

    @property
    def padded_tokens(self) -> int:
        return len(self.input_ids) * len(self.input_ids[0]) if self.input_ids else 0

    def parts(self, max_tokens: int | None) -> list[Batch]:
        """The rows in groups of at most `max_tokens` padded tokens (a longer row alone), each padded only to
        its own longest row: summing their losses gives the batch's gradient with a fraction of the
        activation memory. The batch itself when it fits."""
        if not max_tokens or self.padded_tokens <= max_tokens:
            return [self]
        lengths = [sum(mask) for mask in self.attention_mask]
        groups: list[list[int]] = []
        for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
            current = groups[-1] if groups else []
            width = max(lengths[r] for r in [*current, row])
            if current and width * (len(current) + 1) <= max_tokens:
                current.append(row)
            else:
                groups.append([row])
        return [self._rows(group, max(lengths[r] for r in group)) for group in groups]

    def _rows(self, rows: Sequence[int], width: int) -> Batch:
        return Batch(
            indices=tuple(self.indices[r] for r in rows),
            input_ids=[self.input_ids[r][:width] for r in rows],
            attention_mask=[self.attention_mask[r][:width] for r in rows],
            labels=[self.labels[r][:width] for r in rows],
        )

    @property
    def target_tokens(self) -> int:
        """Positions the loss is taken on: labelled tokens after a row's first (nothing predicts that one)."""
        return sum(label != IGNORE_INDEX for row in self.labels for label in row[1:])


def read_examples(path: Path) -> list[Example]:
    """Examples of a JSONL file, one {"prompt": ..., "completion": ...} a line; other fields are ignored."""
    examples: list[Example] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TrainingError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}:{number}: not JSON: {exc.msg}") from exc
        fields = row if isinstance(row, dict) else {}
        prompt, completion = fields.get("prompt"), fields.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise TrainingError(f"{path}:{number}: needs a string 'prompt' and a non-empty 'completion'")
        examples.append(Example(prompt, completion))
    if not examples:
        raise TrainingError(f"{path} holds no examples")
    return examples


def encode(
    prompt_ids: Sequence[int], completion_ids: Sequence[int], max_seq_len: int, keep_prefix: int = 1
) -> Encoded:
    """Prompt + completion with the loss on the completion only. Too long: the prompt loses tokens from its
    left, after the first `keep_prefix` (the BOS); a completion that alone does not fit is cut at its end."""
    if not completion_ids:
        raise TrainingError("a completion encodes to no tokens")
    prefix = list(prompt_ids[:keep_prefix])
    room = max_seq_len - len(prefix)
    if room < 1:
        raise TrainingError(f"max_seq_len {max_seq_len} leaves no room for a completion")
    completion = list(completion_ids[:room])
    rest = list(prompt_ids[keep_prefix:])
    keep = room - len(completion)
    rest = rest[max(0, len(rest) - keep) :] if keep > 0 else []
    prompt = prefix + rest
    truncated = len(prompt) < len(prompt_ids) or len(completion) < len(completion_ids)
    return Encoded(
        input_ids=tuple(prompt + completion),
        labels=(IGNORE_INDEX,) * len(prompt) + tuple(completion),
        truncated=truncated,
    )


def collate(examples: Sequence[Encoded], indices: Sequence[int], pad_id: int) -> Batch:
    """Right-pad the chosen examples to the longest of them (not to max_seq_len)."""
    chosen = [examples[i] for i in indices]
    width = max(map(len, chosen))
    return Batch(
        indices=tuple(indices),
        input_ids=[list(e.input_ids) + [pad_id] * (width - len(e)) for e in chosen],
        attention_mask=[[1] * len(e) + [0] * (width - len(e)) for e in chosen],
        labels=[list(e.labels) + [IGNORE_INDEX] * (width - len(e)) for e in chosen],
    )


def plan_batches(
    lengths: Sequence[int], batch_size: int, seed: int, mega_batch: int = MEGA_BATCH
) -> list[list[int]]:
    """One epoch: shuffle, sort by length within windows of `mega_batch` batches, cut, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * mega_batch
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the tokens a plan computes on that are padding."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return 1.0 - real / padded if padded else 0.0


class Schedule:
    """Which examples step N trains on: a fresh length-grouped plan each epoch, all derived from the seed, so
    a resumed run sees exactly the batches an uninterrupted one would have."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        if not lengths:
            raise TrainingError("no training examples")
        self._lengths = list(lengths)
        self._batch_size = batch_size
        self._seed = seed
        self._plans: dict[int, list[list[int]]] = {}

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self._lengths) // self._batch_size)

    def plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            seed = self._seed * 1_000_003 + epoch
            self._plans = {epoch: plan_batches(self._lengths, self._batch_size, seed)}
        return self._plans[epoch]

    def at(self, step: int) -> list[int]:
        """The example indices of 0-based `step`."""
        epoch, index = divmod(step, self.batches_per_epoch)
        return self.plan(epoch)[index]

    def epochs(self, steps: int) -> float:
        """How many passes over the data `steps` steps make."""
        return steps / self.batches_per_epoch

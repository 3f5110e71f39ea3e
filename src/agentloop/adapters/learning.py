"""Glue between the learning service's ports and the real parts: stored conversations as the dataset source,
the engine + bundled suites as the evaluator, and the training subprocess as the trainer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agentloop.adapters.storage.groupthink_repository import SqlGroupThinkStore
from agentloop.adapters.storage.learning_repository import SqlLearningStore, StoredDataset
from agentloop.adapters.storage.repository import SqlStore
from agentloop.application.agent import AgentService
from agentloop.application.learning.dataset import (
    ConversationForTraining,
    build_dataset,
    examples_from,
)
from agentloop.application.learning.evaluation import EvalReport, EvalSettings, load_suites, run_eval
from agentloop.application.learning.evaluation import MemoryStore as EvalStore
from agentloop.application.learning.service import DatasetSummary, Progress, TrainOutcome
from agentloop.application.ports import AdapterHost, InferenceEngine
from agentloop.application.tools import ToolRegistry
from agentloop.domain.learning import Feedback, ModelVersion
from agentloop.domain.model import Conversation
from agentloop.errors import NotFoundError

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"


class StoredDatasetSource:
    """Training examples from stored conversations and their feedback, rendered with the serving prompt."""

    def __init__(
        self,
        learning: SqlLearningStore,
        conversations: SqlStore,
        tools: ToolRegistry,
        limit: int = 5000,
        labels: SqlGroupThinkStore | None = None,
    ) -> None:
        self.learning = learning
        self.conversations = conversations
        self.tools = tools
        self.limit = limit
        self.labels = labels

    async def sources(self, since: datetime | None) -> list[ConversationForTraining]:
        pairs = await self.learning.conversations_with_feedback(since, self.limit)
        found: dict[str, tuple[Conversation, list[Feedback], dict[str, float]]] = {
            conversation.id: (conversation, feedback, {}) for conversation, feedback in pairs
        }
        if self.labels is not None:
            # GroupThink consensus turns (ADR-0010) join with their agreement as the `groupthink` signal.
            for conversation, agreement in await self.labels.labeled_conversations(self.limit, since):
                _, feedback, _ = found.get(conversation.id, (conversation, [], {}))
                found[conversation.id] = (conversation, feedback, agreement)
        sources = []
        for conversation, feedback, agreement in found.values():
            try:
                agent = await self.conversations.get_agent(conversation.agent_id)
            except NotFoundError:
                continue
            names = [name for name in agent.allowed_tools if name in self.tools.names()]
            tools = self.tools.select(names)
            sources.append(
                ConversationForTraining(conversation, agent.system_prompt, tools, feedback, agreement)
            )
        return sources

    async def usable_examples_since(self, since: datetime | None) -> int:
        return len(examples_from(await self.sources(since)))

    async def build(self, out_root: Path) -> DatasetSummary:
        staging = out_root / ".building"
        shutil.rmtree(staging, ignore_errors=True)
        manifest = build_dataset(await self.sources(None), staging)
        final = out_root / manifest.content_hash[:16]
        if final.exists():
            shutil.rmtree(staging)
        else:
            staging.replace(final)
        await self.learning.add_dataset(
            StoredDataset(manifest.content_hash, str(final), dict(manifest.signals), manifest.created_at)
        )
        return DatasetSummary(
            manifest.content_hash,
            final,
            final / TRAIN_FILE,
            final / VALIDATION_FILE,
            manifest.train,
            manifest.validation,
            dict(manifest.signals),
        )


class EngineEvaluator:
    """Runs the held-out suites on a version by switching the engine to it, then back to what it served."""

    def __init__(
        self,
        engine: InferenceEngine,
        host: AdapterHost,
        versions: SqlLearningStore,
        tools: ToolRegistry,
        workspace: Path,
        suites: Sequence[str] = (),
        max_items_per_suite: int = 0,
        single_line: bool = True,
    ) -> None:
        self.engine = engine
        self.host = host
        self.versions = versions
        self.tools = tools
        self.workspace = workspace
        self.suites = list(suites) or None
        self.max_items = max_items_per_suite
        self.split = "heldout"
        self.single_line = single_line
        self._reports: dict[tuple[Any, ...], EvalReport] = {}

    def items(self) -> list[Any]:
        items = load_suites(self.suites, split=self.split)
        if self.max_items <= 0:
            return items
        kept: dict[str, int] = {}
        chosen = []
        for item in items:
            if kept.get(item.suite, 0) < self.max_items:
                kept[item.suite] = kept.get(item.suite, 0) + 1
                chosen.append(item)
        return chosen

    async def evaluate(self, version: ModelVersion) -> EvalReport:
        items = self.items()
        # Greedy decoding with a fixed seed: the same version on the same items scores the same, so a
        # version already measured in this process (the serving one, cycle after cycle) is not re-run.
        key = (version.id, version.adapter_sha256, self.split, tuple(item.id for item in items))
        if key in self._reports:
            return self._reports[key]
        await self.host.serve_version(version.id, _adapter(version))
        try:
            self._reports[key] = await run_eval(self._service, items, EvalSettings())
            return self._reports[key]
        finally:
            serving = await self.versions.serving_version()
            if serving is not None and serving.id != version.id:
                await self.host.serve_version(serving.id, _adapter(serving))

    def _service(self, store: EvalStore) -> AgentService:
        return AgentService(
            self.engine, store, self.tools, self.workspace, single_line_answers=self.single_line, seed=0
        )


def _adapter(version: ModelVersion) -> Path | None:
    return None if version.adapter_path is None else Path(version.adapter_path)


def hyperparameters(settings: Any) -> Mapping[str, Any]:
    return {
        "max_steps": settings.train_max_steps,
        "batch_size": settings.train_batch_size,
        "learning_rate": settings.train_learning_rate,
        "lora_r": settings.train_lora_r,
        "lora_alpha": settings.train_lora_r * 2,
        # The prompt prefix (system text, tools, demonstrations) is ~1,100 tokens: keep it whole.
        "max_seq_len": min(settings.n_ctx, 2048),
        "max_batch_tokens": settings.train_max_batch_tokens or None,
        "seed": 0,
    }


class SubprocessTrainer:
    """LoRA training in a child process (never the API's): progress flows back as it comes; cancelling the
    awaiting task stops the child after a checkpoint."""

    def __init__(self, base: Path, base_sha256: str, cache_dir: Path, threads: int | None = None) -> None:
        self.base = base
        self.base_sha256 = base_sha256
        self.cache_dir = cache_dir
        self.threads = threads

    async def train(
        self,
        dataset: DatasetSummary,
        output_dir: Path,
        hyperparameters: Mapping[str, Any],
        on_progress: Progress,
    ) -> TrainOutcome:
        from agentloop.adapters.training.run import run_training_process
        from agentloop.adapters.training.spec import TrainSpec

        known = {f.name for f in dataclasses.fields(TrainSpec)}
        spec = TrainSpec(
            base=self.base,
            base_sha256=self.base_sha256,
            train_file=dataset.train_file,
            validation_file=dataset.validation_file if dataset.validation_examples else None,
            output_dir=output_dir,
            cache_dir=self.cache_dir,
            threads=self.threads,
            **{k: v for k, v in hyperparameters.items() if k in known and k not in _FIXED},
        )
        updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        task = asyncio.create_task(run_training_process(spec, updates.put_nowait))
        try:
            while not task.done():
                getter = asyncio.ensure_future(updates.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await on_progress(getter.result())
                else:
                    getter.cancel()
            result = task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return TrainOutcome(
            status=str(result.status),
            adapter_path=result.gguf_adapter,
            adapter_sha256=result.adapter_sha256,
            metrics={k: v for k, v in result.to_dict().items() if k not in ("peft_dir", "gguf_adapter")},
        )


_FIXED = {"base", "base_sha256", "train_file", "validation_file", "output_dir", "cache_dir", "threads"}

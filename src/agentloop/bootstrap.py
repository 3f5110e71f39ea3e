"""The composition root: everything the server, worker and CLI use is built here and nowhere else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentloop.adapters.auth import (
    Argon2Hasher,
    JwtCodec,
    KeyPair,
    Limits,
    RateLimiter,
    ensure_key_pair,
    load_key_pair,
    rate_limit_storage,
)
from agentloop.adapters.cache import CachedConversationStore, connect_redis
from agentloop.adapters.learning import (
    EngineEvaluator,
    StoredDatasetSource,
    SubprocessTrainer,
    hyperparameters,
)
from agentloop.adapters.metrics import Metrics, ObservedEngine, metrics_for_process
from agentloop.adapters.model_files import ModelFile
from agentloop.adapters.queue import HueyQueue, make_huey
from agentloop.adapters.storage.auth_repository import SqlAuthStore
from agentloop.adapters.storage.database import create_engine, upgrade
from agentloop.adapters.storage.groupthink_repository import SqlGroupThinkStore
from agentloop.adapters.storage.learning_repository import SqlLearningStore
from agentloop.adapters.storage.repository import SqlStore
from agentloop.adapters.tools import builtin_tools
from agentloop.application.agent import AgentService
from agentloop.application.auth import AuthConfig, AuthService
from agentloop.application.groupthink import GroupThink, GroupThinkConfig, GroupThinkService
from agentloop.application.learning.labeling import Labeler
from agentloop.application.learning.registry import ModelRegistry, RecordOnlyHost, adapter_host_of
from agentloop.application.learning.service import LearningConfig, LearningService
from agentloop.application.ports import AdapterHost, ConversationStore, InferenceEngine
from agentloop.application.resilience import Backend, CircuitBreaker, FallbackEngine
from agentloop.application.tools import ToolRegistry
from agentloop.domain.model import Agent, ModelConfig
from agentloop.errors import ValidationError
from agentloop.settings import Settings

DEFAULT_AGENT = "default"


@dataclass
class Container:
    settings: Settings
    engine: InferenceEngine
    store: SqlStore
    database: AsyncEngine
    tools: ToolRegistry
    agents: AgentService
    model_file: ModelFile | None
    default_agent: Agent
    learning_store: SqlLearningStore
    registry: ModelRegistry
    learning: LearningService
    queue: HueyQueue
    auth: AuthService
    limiter: RateLimiter
    metrics: Metrics = field(default_factory=metrics_for_process)
    cache: CachedConversationStore | None = None
    groupthink: GroupThinkService | None = None
    labeler: Labeler | None = None


async def start_embedded_engine(settings: Settings) -> tuple[InferenceEngine, ModelFile]:
    """Assemble (first run only) and load the GGUF in-process."""
    from agentloop.adapters.inference.llama import LlamaEngine
    from agentloop.adapters.model_files import ensure_model

    model = await asyncio.to_thread(ensure_model, settings.model_path, settings.cache_dir)
    engine = LlamaEngine(
        model.path,
        n_ctx=settings.n_ctx,
        n_threads=settings.threads,
        n_batch=settings.n_batch,
        max_parallel=settings.max_parallel,
    )
    await engine.start()
    return engine, model


# Tool examples are shown in this order; a small model copies the nearest example most, so the tool it
# needs most often (the calculator) comes last.
TOOL_ORDER = ("current_time", "list_files", "read_file", "write_file", "fetch_url", "python", "calculator")


def default_tool_names(settings: Settings, tools: ToolRegistry) -> tuple[str, ...]:
    # fetch_url is useless (and tempting for a small model) until hosts are allow-listed.
    names = [n for n in tools.names() if n != "fetch_url" or settings.fetch_allowed_hosts]
    return tuple(sorted(names, key=lambda n: (TOOL_ORDER.index(n) if n in TOOL_ORDER else -1, n)))


async def ensure_default_agent(store: SqlStore, settings: Settings, tools: ToolRegistry) -> Agent:
    existing = await store.get_agent_by_name(DEFAULT_AGENT)
    if existing is not None:
        return existing
    agent = Agent(
        DEFAULT_AGENT,
        ModelConfig(max_tokens=settings.max_tokens),
        allowed_tools=default_tool_names(settings, tools),
        max_steps=settings.max_steps,
    )
    try:
        await store.create_agent(agent)
    except ValidationError:
        # Another replica starting at the same moment created it first.
        raced = await store.get_agent_by_name(DEFAULT_AGENT)
        if raced is None:
            raise
        return raced
    return agent


@asynccontextmanager
async def bootstrap(
    settings: Settings, *, follow_versions: bool = True, **overrides: Any
) -> AsyncIterator[Container]:
    """Build the application; `overrides` replace parts by name (engine, tools) for tests. With
    `follow_versions` the engine keeps serving whatever version the database says is promoted."""
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    if settings.auto_migrate:
        await asyncio.to_thread(upgrade, url)
    database = create_engine(url)
    sessions = async_sessionmaker(database, expire_on_commit=False)
    store = SqlStore(sessions)
    metrics: Metrics = overrides.get("metrics") or metrics_for_process()
    store.on_events = metrics.observe_events
    tools: ToolRegistry = overrides.get("tools") or ToolRegistry(builtin_tools(settings))
    engine: InferenceEngine | None = overrides.get("engine")
    model_file: ModelFile | None = overrides.get("model_file")
    follow: asyncio.Task[None] | None = None
    owns_engine = engine is None
    cache = build_cache(settings, store)
    try:
        if engine is None:
            engine, model_file = await start_engine(settings)
        agent = await ensure_default_agent(store, settings, tools)
        observed = ObservedEngine(engine, metrics)
        conversations: ConversationStore = cache or store
        agents = AgentService(
            observed,
            conversations,
            tools,
            settings.workspace_dir,
            settings.max_message_chars,
            settings.single_line_answers,
        )
        learning_store = SqlLearningStore(sessions)
        learning_store.on_events = metrics.observe_events
        host = adapter_host_of(engine)
        # An engine that cannot switch versions still gets a registry: promotions are recorded for others.
        swapper: AdapterHost = host or RecordOnlyHost()
        registry = ModelRegistry(learning_store, swapper)
        if model_file is not None:
            await registry.ensure_base(model_file.sha256)
        if host is not None and follow_versions:
            await registry.sync_host()
            follow = asyncio.create_task(registry.follow(settings.version_poll_s))
        queue = HueyQueue(make_huey(settings), lambda job_id: run_job_in_worker(settings, job_id))
        # Evaluation runs on the bare engine: its model calls are not served traffic.
        labels = SqlGroupThinkStore(sessions)
        learning = build_learning(
            settings, engine, swapper, tools, learning_store, store, registry, model_file, queue, labels
        )
        groupthink, labeler = build_groupthink(settings, engine, tools, store, sessions)
        yield Container(
            settings,
            observed,
            store,
            database,
            tools,
            agents,
            model_file,
            agent,
            learning_store,
            registry,
            learning,
            queue,
            build_auth(settings, SqlAuthStore(sessions), overrides.get("keys")),
            RateLimiter(
                Limits(settings.rate_limit_user, settings.rate_limit_ip, settings.rate_limit_login),
                rate_limit_storage(settings.redis_url),
            ),
            metrics,
            cache,
            groupthink,
            labeler,
        )
    finally:
        if follow is not None:
            follow.cancel()
            with suppress(asyncio.CancelledError):
                await follow
        close = getattr(engine, "close", None) if owns_engine else None
        if close is not None:
            await close()
        if cache is not None:
            await cache.close()
        await database.dispose()


def jwt_keys(settings: Settings) -> KeyPair:
    """The configured key files, or a pair generated once into the data directory."""
    if settings.jwt_private_key_file is not None:
        return load_key_pair(settings.jwt_private_key_file, settings.jwt_public_key_file)
    return ensure_key_pair(settings.key_dir)


def build_auth(settings: Settings, store: SqlAuthStore, keys: KeyPair | None = None) -> AuthService:
    codec = JwtCodec(keys or jwt_keys(settings), settings.jwt_issuer, settings.jwt_audience)
    hasher = Argon2Hasher(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism)
    config = AuthConfig(
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.access_token_ttl_s,
        settings.refresh_token_ttl_s,
        cache_credentials=settings.auth_cache,
    )
    return AuthService(store, hasher, codec, config)


def build_learning(
    settings: Settings,
    engine: InferenceEngine,
    host: AdapterHost,
    tools: ToolRegistry,
    learning_store: SqlLearningStore,
    store: SqlStore,
    registry: ModelRegistry,
    model_file: ModelFile | None,
    queue: HueyQueue,
    labels: SqlGroupThinkStore | None = None,
) -> LearningService:
    base_path = model_file.path if model_file else settings.cache_dir
    base_sha = model_file.sha256 if model_file else "unknown"
    evaluator = EngineEvaluator(
        engine,
        host,
        learning_store,
        tools,
        settings.workspace_dir / "eval",
        settings.eval_suites,
        settings.eval_max_items_per_suite,
        settings.single_line_answers,
    )
    config = LearningConfig(
        data_dir=settings.resolved_data_dir,
        base_sha256=base_sha,
        min_examples=settings.train_min_examples,
        min_interval_s=settings.train_min_interval_s,
        hyperparameters=hyperparameters(settings),
        min_gain=settings.gate_min_gain,
        max_regression=settings.gate_max_regression,
    )
    return LearningService(
        learning_store,
        StoredDatasetSource(learning_store, store, tools, labels=labels),
        SubprocessTrainer(base_path, base_sha, settings.cache_dir, settings.threads),
        evaluator,
        registry,
        config,
        queue,
    )


def groupthink_config(settings: Settings) -> GroupThinkConfig:
    return GroupThinkConfig(
        samples=settings.groupthink_samples,
        temperature=settings.groupthink_temperature,
        max_tokens=settings.groupthink_max_tokens,
        personas=tuple(settings.groupthink_personas),
        failed_tool_weight=settings.groupthink_failed_tool_weight,
        threshold=settings.groupthink_threshold,
        min_support=settings.groupthink_min_support,
    )


def build_groupthink(
    settings: Settings,
    engine: InferenceEngine,
    tools: ToolRegistry,
    store: SqlStore,
    sessions: async_sessionmaker[AsyncSession],
) -> tuple[GroupThinkService, Labeler]:
    """GroupThink as an inference mode and as the labeler of unrated traffic (ADR-0010)."""
    groupthink = GroupThink(
        engine,
        tools,
        settings.workspace_dir / "groupthink",
        groupthink_config(settings),
        settings.single_line_answers,
        concurrency=settings.max_parallel,
    )
    labeler = Labeler(
        groupthink,
        SqlGroupThinkStore(sessions),
        store,
        max_tokens=settings.max_tokens,
        max_steps=settings.max_steps,
        coaching_limit=settings.groupthink_demonstrations,
    )
    return GroupThinkService(groupthink, store), labeler


def run_job_in_worker(settings: Settings, job_id: str) -> None:
    """The queue task: a fresh container (own engine, used for evaluation) runs one training job."""

    async def run() -> None:
        async with bootstrap(settings, follow_versions=False) as container:
            await container.learning.run(job_id)

    asyncio.run(run())


# --- production backends: remote inference behind circuit breakers, the Redis conversation cache ------------


def breaker(settings: Settings, name: str) -> CircuitBreaker:
    return CircuitBreaker(name, settings.breaker_failures, settings.breaker_reset_s)


async def start_backend(settings: Settings, kind: str) -> tuple[InferenceEngine, ModelFile | None]:
    """One inference backend by name: `embedded`, `ollama` or `openai`."""
    from agentloop.adapters.inference.remote import OllamaEngine, OpenAIEngine

    if kind == "embedded":
        return await start_embedded_engine(settings)
    if kind == "ollama":
        ollama = OllamaEngine(
            settings.ollama_url,
            settings.ollama_model,
            context_size=settings.n_ctx,
            timeout_s=settings.backend_timeout_s,
            retries=settings.backend_retries,
        )
        return ollama, None
    openai = OpenAIEngine(
        settings.openai_base_url,
        settings.openai_model,
        api_key=settings.openai_api_key,
        context_size=settings.n_ctx,
        timeout_s=settings.backend_timeout_s,
        retries=settings.backend_retries,
        grammar_field=settings.openai_grammar_field,
    )
    return openai, None


async def start_engine(settings: Settings) -> tuple[InferenceEngine, ModelFile | None]:
    """The configured backend; with remote backends or fallbacks, each behind its own circuit breaker."""
    kinds = list(dict.fromkeys([settings.inference_backend, *settings.inference_fallbacks]))
    if kinds == ["embedded"]:
        return await start_embedded_engine(settings)
    backends: list[Backend] = []
    model_file: ModelFile | None = None
    for kind in kinds:
        engine, file = await start_backend(settings, kind)
        model_file = model_file or file
        backends.append(Backend(kind, engine, breaker(settings, kind)))
    return FallbackEngine(backends), model_file


def build_cache(settings: Settings, store: SqlStore) -> CachedConversationStore | None:
    """The Redis conversation cache when AGENTLOOP_REDIS_URL is set; connecting is lazy, so a Redis that is
    down at start only means serving without cache until it answers."""
    if not settings.redis_url:
        return None
    client = connect_redis(settings.redis_url)
    return CachedConversationStore(store, client, breaker(settings, "redis"), settings.cache_ttl_s)

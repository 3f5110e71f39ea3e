"""All configuration, read from AGENTLOOP_* environment variables (or a .env file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTLOOP_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Holds the database, adapters, workspaces and logs.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "agentloop",
        description="Slow-to-make artefacts shared across data dirs (the assembled GGUF), keyed by sha256.",
    )
    database_url: str | None = Field(None, description="SQLAlchemy async URL; default SQLite in data_dir.")
    model_path: Path | None = Field(None, description="A GGUF file; default: the bundled Gemma 3 270M.")
    inference_backend: Literal["embedded", "ollama", "openai"] = Field(
        "embedded",
        description="Where the model runs: in-process llama.cpp, an Ollama server, or an OpenAI-compatible "
        "server (llama.cpp server, vLLM).",
    )
    n_ctx: int = Field(4096, ge=512, le=32768, description="Context window of the embedded engine.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp; default all cores.")
    n_batch: int = Field(512, ge=32, description="Prompt tokens llama.cpp evaluates per batch.")
    max_parallel: int = Field(
        4,
        ge=1,
        le=64,
        description="Requests the embedded engine decodes together in one llama.cpp batch (continuous "
        "batching); 1 serves one request at a time.",
    )
    host: str = Field("127.0.0.1", description="Address `agentloop serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `agentloop serve` listens on.")
    auto_migrate: bool = Field(True, description="Apply Alembic migrations when the server starts.")
    max_steps: int = Field(5, ge=1, le=20, description="Tool steps allowed per agent turn.")
    max_tokens: int = Field(256, ge=1, description="Default reply length of a model call.")
    max_message_chars: int = Field(16000, ge=1, description="Longest accepted user message.")
    single_line_answers: bool = Field(
        True,
        description="End an answer at its first newline. The bundled base model never emits <end_of_turn>, "
        "so without this it rambles on; turn off for models that end their turns.",
    )
    tool_timeout_s: float = Field(10.0, gt=0, description="Time limit of one tool call, in seconds.")
    python_timeout_s: float = Field(10.0, gt=0, description="Wall-clock and CPU limit of the python tool.")
    python_memory_mb: int = Field(512, ge=64, description="Address-space limit of the python tool.")
    fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts fetch_url may read (comma-separated); empty = tool off."
    )
    redis_url: str | None = Field(
        None, description="Redis for the distributed job queue (redis://host:6379/0); default: SQLite queue."
    )
    embedded_worker: bool = Field(True, description="`agentloop serve` also runs the training worker.")
    version_poll_s: float = Field(2.0, gt=0, description="How often a server checks which version to serve.")
    train_min_examples: int = Field(
        20, ge=1, description="Usable new examples (rated up / corrected) that trigger a training job."
    )
    train_min_interval_s: float = Field(3600.0, ge=0, description="Least time between triggered jobs.")
    train_max_steps: int = Field(60, ge=1, description="Optimizer steps of one training job.")
    train_batch_size: int = Field(4, ge=1, description="Examples per training step.")
    train_max_batch_tokens: int = Field(
        2560,
        ge=0,
        description="Padded tokens one forward/backward pass holds; a bigger batch is cut into parts that "
        "add up to the same step (bounds training memory; 0 = whole batches).",
    )
    train_learning_rate: float = Field(2e-4, gt=0, description="LoRA learning rate.")
    train_lora_r: int = Field(16, ge=1, description="LoRA rank.")
    gate_min_gain: float = Field(
        0.02, ge=0, description="Held-out accuracy a candidate must gain over the serving version."
    )
    gate_max_regression: float = Field(0.05, ge=0, description="Largest accuracy loss allowed on any suite.")
    eval_suites: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Suites the gate evaluates (comma-separated); empty = all."
    )
    eval_max_items_per_suite: int = Field(
        0, ge=0, description="Held-out items per suite the gate runs (0 = all); fewer is faster, noisier."
    )
    groupthink_samples: int = Field(
        5, ge=1, le=16, description="GroupThink: samples that answer and vote (decoded side by side)."
    )
    groupthink_temperature: float = Field(
        0.3,
        ge=0,
        le=2,
        description="GroupThink: sampling temperature of each sample (the 270M model rarely agrees at 0.7).",
    )
    groupthink_min_support: int = Field(
        3, ge=1, description="GroupThink: samples that must give the winning answer for a label."
    )
    groupthink_threshold: float = Field(
        0.6, gt=0, le=1, description="GroupThink: agreement a consensus needs to become a training label."
    )
    groupthink_failed_tool_weight: float = Field(
        0.25,
        ge=0,
        le=1,
        description="GroupThink: vote weight of a sample whose tool call failed (clean = 1).",
    )
    groupthink_max_tokens: int = Field(
        128, ge=1, description="GroupThink: reply length of each sample's model calls."
    )
    groupthink_personas: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="GroupThink: persona texts appended to sample i's system prompt ('|'-separated).",
    )
    groupthink_demonstrations: int = Field(
        3,
        ge=0,
        description="GroupThink labeling: worked demonstrations the samples see before each practice prompt "
        "(left out of the stored label, so training distills them; 0 = none).",
    )
    improve_label_per_cycle: int = Field(
        32, ge=1, description="`agentloop improve`: prompts GroupThink labels per cycle."
    )
    improve_max_steps: int = Field(
        16, ge=1, description="`agentloop improve`: optimizer steps per cycle (sized for 2 cores, 30 min)."
    )
    improve_max_epochs: float = Field(
        3.0,
        ge=0,
        description="`agentloop improve`: caps the steps at this many passes over the labels (0 = no cap).",
    )
    improve_learning_rate: float = Field(
        5e-4, gt=0, description="`agentloop improve`: LoRA learning rate (few examples, few steps)."
    )
    improve_eval_items_per_suite: int = Field(
        4, ge=0, description="`agentloop improve`: held-out items per suite its gate runs (0 = all)."
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool = Field(False, description="Write logs as JSON lines instead of text.")
    auth_enabled: bool = Field(
        True,
        description="Require a token or API key on the API. Off only on a loopback address: every request "
        "then acts as a local admin.",
    )
    jwt_private_key_file: Path | None = Field(
        None, description="PEM RSA private key that signs access tokens; default: generated in data_dir/keys."
    )
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key checked against the private one; default: derived from it."
    )
    jwt_issuer: str = Field("agentloop", min_length=1, description="`iss` of access tokens, checked.")
    jwt_audience: str = Field("agentloop-api", min_length=1, description="`aud` of access tokens, checked.")
    access_token_ttl_s: int = Field(1800, ge=60, le=86400, description="Lifetime of an access token.")
    refresh_token_ttl_s: int = Field(86400, ge=300, description="Lifetime of a refresh token.")
    auth_cache: bool = Field(
        True,
        description="Remember verified API keys and access tokens until the next revocation (ADR-0011); "
        "false verifies every request against the database.",
    )
    # OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane): tens of milliseconds on a small CPU.
    argon2_time_cost: int = Field(2, ge=1, description="argon2id passes over memory for password hashes.")
    argon2_memory_kib: int = Field(19456, ge=8, description="argon2id memory per password hash, in KiB.")
    argon2_parallelism: int = Field(1, ge=1, description="argon2id lanes per password hash.")
    rate_limit_user: str = Field("120/minute", description="Requests per authenticated user (limits syntax).")
    rate_limit_ip: str = Field("600/minute", description="Requests per client IP address.")
    rate_limit_login: str = Field("10/minute", description="Login and refresh attempts per client address.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body (413 above).")
    max_tools_per_request: int = Field(32, ge=1, description="Most tools one chat completion may declare.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser (comma-separated)."
    )
    inference_fallbacks: Annotated[list[Literal["embedded", "ollama", "openai"]], NoDecode] = Field(
        default_factory=list,
        description="Backends tried in order when the main one fails or its circuit is open "
        "(comma-separated, e.g. `embedded`).",
    )
    ollama_url: str = Field("http://127.0.0.1:11434", description="Base URL of the Ollama server.")
    ollama_model: str = Field("gemma3n:e2b", description="Ollama model that serves the base version.")
    openai_base_url: str = Field(
        "http://127.0.0.1:8080/v1", description="Base URL (with /v1) of the OpenAI-compatible server."
    )
    openai_api_key: str = Field("none", description="API key sent to the OpenAI-compatible server.")
    openai_model: str = Field("gemma", description="Model name that serves the base version there.")
    openai_grammar_field: str = Field(
        "grammar",
        description="Request field that carries the GBNF tool-call grammar (`grammar` for llama.cpp, "
        "`guided_grammar` for vLLM); empty = unconstrained.",
    )
    backend_timeout_s: float = Field(60.0, gt=0, description="Time limit of one call to a remote backend.")
    backend_retries: int = Field(
        2, ge=0, le=10, description="Retries (exponential backoff, jitter) of a failed idempotent call."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failures that open a dependency's circuit breaker."
    )
    breaker_reset_s: float = Field(
        15.0, gt=0, description="Seconds an open circuit waits before one trial call (half-open)."
    )
    cache_ttl_s: int = Field(
        600, ge=1, description="Lifetime of a cached conversation context in Redis, in seconds."
    )

    @field_validator("fetch_allowed_hosts", "eval_suites", "inference_fallbacks", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("groupthink_personas", mode="before")
    @classmethod
    def _split_personas(cls, value: object) -> object:
        if isinstance(value, str):
            return [persona.strip() for persona in value.split("|") if persona.strip()]
        return value

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.resolved_data_dir / 'agentloop.db'}"

    @property
    def key_dir(self) -> Path:
        return self.resolved_data_dir / "keys"

    @property
    def workspace_dir(self) -> Path:
        return self.resolved_data_dir / "workspaces"

    @property
    def threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

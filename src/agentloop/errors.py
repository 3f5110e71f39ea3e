"""The one exception tree of agentloop. Adapters translate library errors into these (`raise ... from exc`);
entrypoints map them to HTTP statuses and CLI exit codes in one place each.

AgentLoopError
├── NotFoundError            unknown agent, conversation, message, model version (HTTP 404)
├── ValidationError          bad input from a caller: out-of-range parameter, unknown tool (HTTP 422)
│   ├── ContextOverflowError the prompt does not fit the model's context window (HTTP 413)
│   └── PayloadTooLargeError a request body or field over its size limit (HTTP 413)
├── AuthenticationError      no, an invalid or an expired credential (HTTP 401)
├── PermissionDeniedError    authenticated, but the role does not allow it (HTTP 403)
├── RateLimitedError         too many requests; carries retry_after_s (HTTP 429)
├── ConflictError            the request clashes with the current state: a job already running (HTTP 409)
├── ToolError                a tool failed or timed out; becomes an observation for the model, never a crash
├── TrainingError            a training job failed: too few examples, the trainer process crashed
├── InferenceError           the inference backend failed (HTTP 503)
│   └── EngineNotReadyError  the model is not loaded (yet) (HTTP 503)
└── StorageError             the database failed (HTTP 503)
"""

from __future__ import annotations


class AgentLoopError(Exception):
    """Base of every error agentloop raises on purpose."""


class NotFoundError(AgentLoopError):
    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident} not found")
        self.kind = kind
        self.ident = ident


class ValidationError(AgentLoopError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ContextOverflowError(ValidationError):
    def __init__(self, prompt_tokens: int, limit: int) -> None:
        super().__init__(
            f"prompt needs {prompt_tokens} tokens but the model's context allows {limit}; "
            "shorten the conversation or start a new one",
            field="messages",
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class ConflictError(AgentLoopError):
    pass


class ToolError(AgentLoopError):
    pass


class TrainingError(AgentLoopError):
    pass


class InferenceError(AgentLoopError):
    pass


class EngineNotReadyError(InferenceError):
    pass


class StorageError(AgentLoopError):
    pass


class PayloadTooLargeError(ValidationError):
    pass


class AuthenticationError(AgentLoopError):
    pass


class PermissionDeniedError(AgentLoopError):
    pass


class RateLimitedError(AgentLoopError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)

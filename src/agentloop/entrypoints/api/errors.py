"""The one place where errors become HTTP responses.

Every error is first described as a `Problem` (status, message, field); the same Problem is then written
as `{"detail": ..., "field": ...}` under /api and /health, or in OpenAI's `{"error": {...}}` shape under /v1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from agentloop.errors import (
    AgentLoopError,
    AuthenticationError,
    ConflictError,
    ContextOverflowError,
    InferenceError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    StorageError,
    TrainingError,
    ValidationError,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
OPENAI_PREFIX = "/v1/"

# Looked up along the exception's MRO, so subclasses (EngineNotReadyError) inherit their parent's status.
STATUS: dict[type[AgentLoopError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
    ContextOverflowError: 413,
    PayloadTooLargeError: 413,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    RateLimitedError: 429,
    TrainingError: 422,
    ValidationError: 422,
    InferenceError: 503,
    StorageError: 503,
}

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


@dataclass(frozen=True)
class Problem:
    status: int
    message: str
    field: str | None = None
    code: str | None = None
    errors: list[dict[str, Any]] | None = None
    headers: dict[str, str] = dataclass_field(default_factory=dict)


def problem_from(exc: Exception) -> Problem:
    """Describe any exception as a Problem; unknown ones become a generic 500 (the details go to the log)."""
    if isinstance(exc, AgentLoopError):
        return _domain_problem(exc)
    if isinstance(exc, RequestValidationError):
        return _validation_problem(exc)
    if isinstance(exc, HTTPException):
        return Problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
    return Problem(500, "internal server error")


def _domain_problem(exc: AgentLoopError) -> Problem:
    status = next((STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS), 500)
    if status == 500:
        return Problem(500, "internal server error")
    headers = _headers(exc, status)
    code = "context_length_exceeded" if isinstance(exc, ContextOverflowError) else None
    return Problem(status, str(exc), getattr(exc, "field", None), code, headers=headers)


def _headers(exc: AgentLoopError, status: int) -> dict[str, str]:
    if status == 503:
        return {"Retry-After": str(RETRY_AFTER_S)}
    if isinstance(exc, RateLimitedError):
        return {"Retry-After": str(exc.retry_after_s)}
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="agentloop"'}
    return {}


def _validation_problem(exc: RequestValidationError) -> Problem:
    errors = [_describe_error(error) for error in exc.errors()]
    malformed = next((e for e in errors if e["type"] == "json_invalid"), None)
    if malformed is not None:
        return Problem(400, malformed["message"], "body", errors=[malformed])
    first = errors[0] if errors else {"field": None, "message": "invalid request"}
    message = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
    return Problem(422, message or "invalid request", first["field"], errors=errors)


def _describe_error(error: Any) -> dict[str, Any]:
    location = [str(part) for part in error.get("loc", ())]
    if location and location[0] in ("body", "query", "path", "header", "cookie"):
        location = location[1:]
    if error.get("type") == "json_invalid":
        reason = error.get("ctx", {}).get("error", "invalid JSON")
        position = f" at position {location[0]}" if location else ""
        return {
            "field": "body",
            "message": f"malformed JSON body: {reason}{position}",
            "type": "json_invalid",
        }
    return {
        "field": ".".join(location) or None,
        "message": error.get("msg", "invalid value"),
        "type": error.get("type"),
    }


def render(request: Request, problem: Problem) -> JSONResponse:
    """Write a Problem in the shape the caller's API speaks."""
    if request.url.path.startswith(OPENAI_PREFIX):
        return JSONResponse(
            openai_error(problem), status_code=openai_status(problem), headers=problem.headers
        )
    body: dict[str, Any] = {"detail": problem.message}
    if problem.field is not None:
        body["field"] = problem.field
    if problem.errors:
        body["errors"] = problem.errors
    return JSONResponse(body, status_code=problem.status, headers=problem.headers)


def openai_status(problem: Problem) -> int:
    # OpenAI reports every malformed or out-of-range request (context overflow included) as 400; a body over
    # the size limit stays 413, as the HTTP layer in front of any server would answer.
    if problem.status == 422 or problem.code == "context_length_exceeded":
        return 400
    return problem.status


def openai_error(problem: Problem) -> dict[str, Any]:
    """A Problem in OpenAI's error shape, for responses and for errors inside an event stream."""
    status = openai_status(problem)
    kind = OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": problem.message, "type": kind, "param": problem.field, "code": problem.code}}


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    problem = problem_from(exc)
    if problem.status >= 500 and not isinstance(exc, AgentLoopError | HTTPException):
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    elif problem.status >= 500:
        logger.warning("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
    return render(request, problem)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through `problem_from` and `render`."""
    for kind in (AgentLoopError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, _handle)

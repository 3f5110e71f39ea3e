"""Structured logs: structlog renders its own and the standard library records, as JSON or for humans.

Every record is masked on its way out: values under secret-sounding keys are replaced whole, and every
string (the message, tracebacks, uvicorn's access lines with their query strings) goes through the same
masking as training data, which hides emails, phone numbers, passwords, bearer tokens, JWTs and keys.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from agentloop.application.learning.masking import SECRET, mask

SECRET_KEYS = re.compile(
    r"(?i)^(.*[_-])?(pass(word|wd|phrase)?|pwd|secret|token|api_?key|key|authorization|cookie|credentials?)$"
)
# Our own API keys and refresh tokens, wherever they appear (e.g. ?access_token=alk_... in an access log).
OWN_TOKENS = re.compile(r"\bal[kr]_[A-Za-z0-9_-]{16,}")
# uvicorn installs handlers of its own that would print around the masking.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


# Short strings found clean, so that the few values most log lines repeat (the event, method, path, route,
# logger) are scanned once, not on every line. Only clean strings are kept: no secret stays here.
_CLEAN_MAX_CHARS = 160
_CLEAN_MAX_ENTRIES = 4096
_clean: set[str] = set()
# Added to every record by our own processors from the clock: nothing a caller sends can reach them.
_OWN_FIELDS = frozenset({"timestamp"})


def mask_text(text: str) -> str:
    if text in _clean:
        return text
    masked = mask(OWN_TOKENS.sub(SECRET, text))
    if masked == text and len(text) <= _CLEAN_MAX_CHARS:
        if len(_clean) >= _CLEAN_MAX_ENTRIES:
            _clean.clear()
        _clean.add(text)
    return masked


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: SECRET if SECRET_KEYS.search(str(k)) else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


def mask_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: no password, token, key or personal datum leaves in a log record."""
    for key, value in list(event_dict.items()):
        if key.startswith("_") or key in _OWN_FIELDS:
            continue
        event_dict[key] = SECRET if key != "event" and SECRET_KEYS.search(key) else _masked(value)
    return event_dict


def configure_logging(level: str = "INFO", json_output: bool = False) -> None:
    """Send every log record to stderr through one structlog formatter."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        if not server_logger.handlers and not server_logger.propagate:
            # Muted on purpose: uvicorn's `access_log=False` (`agentloop serve`, whose app logs every request
            # itself) leaves its access logger so. Unmuting it logged each request twice, and made uvicorn
            # build a second record per request, since it asks `hasHandlers()` (ADR-0011, stop 15).
            continue
        server_logger.handlers[:] = []
        server_logger.propagate = True
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))

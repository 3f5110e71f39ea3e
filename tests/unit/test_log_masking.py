"""Logs never carry passwords, tokens, keys or personal data: structlog's and the standard library's records,
uvicorn's access lines (with their query strings) and tracebacks alike."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from agentloop.adapters.logs import configure_logging, mask_text
from agentloop.application.learning.masking import SECRET, mask

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
KEY = "alk_Q0c7uXw2bJ9aZp1LrT5sVd8eYf3gHk6m"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """What the configured handler writes, as JSON lines."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    # A uvicorn server started earlier in this process (access_log=False) leaves its access logger muted.
    access = logging.getLogger("uvicorn.access")
    access.disabled, access.propagate = False, True
    access.setLevel(logging.NOTSET)
    configure_logging("INFO", json_output=True)
    ours = root.handlers[0]
    assert isinstance(ours, logging.StreamHandler)
    buffer = io.StringIO()
    ours.setStream(buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.reset_defaults()


def test_every_kind_of_record_is_masked(json_logs: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info(
        '%s - "GET %s HTTP/1.1" %d', "10.0.0.1", f"/api/v1/conversations/c1/ws?access_token={JWT}", 101
    )
    logging.getLogger("agentloop.test").info("login bob@example.com password=hunter2hunter2 key %s", KEY)
    structlog.get_logger("agentloop.test").info(
        "request", password="hunter2hunter2", authorization=f"Bearer {JWT}", user="bob@example.com", tokens=7
    )
    try:
        raise ValueError(f"cannot use api_key={KEY}")
    except ValueError:
        logging.getLogger("agentloop.test").exception("failed")
    records = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert len(records) == 4
    text = json.dumps(records)
    for secret in (JWT, KEY, "hunter2hunter2", "bob@example.com"):
        assert secret not in text
    assert "<SECRET>" in text and "<EMAIL>" in text
    assert '"tokens": 7' in text  # counts are not secrets


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=16))
def test_our_keys_and_refresh_tokens_never_survive(suffix: str) -> None:
    for prefix in ("alk_", "alr_"):
        assert prefix + suffix not in mask_text(f"header Bearer {prefix}{suffix} and more")


@given(st.lists(st.sampled_from(["GET", "/api/v1/conversations", f"key {KEY}", "mail bob@example.com", JWT])))
def test_repeated_values_mask_the_same_every_time(values: list[str]) -> None:
    """Clean short strings are remembered to skip rescanning them; masking never depends on what came
    before, and nothing that needed masking is remembered."""
    from agentloop.adapters import logs

    for value in values:
        assert mask_text(value) == mask(logs.OWN_TOKENS.sub(SECRET, value))
    assert not {KEY, JWT, "bob@example.com"} & {word for text in logs._clean for word in text.split()}

"""llama.cpp's log lines through the `llama.cpp` logger at their ggml levels (inference/llama_logs.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agentloop.adapters.inference import llama_logs


@pytest.fixture
def llama_logger() -> Iterator[logging.Logger]:
    before = llama_logs.logger.level
    llama_logs.logger.setLevel(logging.ERROR)
    yield llama_logs.logger
    llama_logs.logger.setLevel(before)


def test_warnings_stay_quiet_at_the_default_level_and_errors_come_through(
    llama_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="root"):
        llama_logs.forward(3, b"llama_kv_cache_iswa: using full-size SWA cache (ref: ...)\n")
        llama_logs.forward(2, b"llama_context: n_ctx = 4096\n")
        llama_logs.forward(4, b"llama_adapter_lora_init: failed to load adapter\n")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("llama.cpp", logging.ERROR, "llama_adapter_lora_init: failed to load adapter")
    ]


def test_levels_follow_ggml_and_a_continuation_keeps_the_previous_level(
    llama_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    llama_logger.setLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG, logger="llama.cpp"):
        for level, text in [(1, b"debug"), (2, b"info"), (3, b"warn\n"), (5, b"...more\n"), (4, b"error")]:
            llama_logs.forward(level, text)
        llama_logs.forward(5, b"\n")  # a bare newline continuing a line: nothing to log
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warn"),
        (logging.WARNING, "...more"),
        (logging.ERROR, "error"),
    ]
    assert llama_logs.python_level(99) == logging.ERROR  # an unknown level is not dropped silently


def test_bytes_that_are_not_utf8_do_not_break_the_callback(
    llama_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="llama.cpp"):
        llama_logs.forward(4, b"bad \xff byte")
    assert caplog.records[0].getMessage() == "bad \ufffd byte"

"""llama.cpp's own log lines, through Python logging (the `llama.cpp` logger) at their real levels.

llama-cpp-python 0.3.36 maps ggml's log levels by an older numbering (3 meant ERROR; ggml now counts NONE 0,
DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5), so with `verbose=False` every llama.cpp *warning* still reached
stderr as raw text: "using full-size SWA cache" twice per engine start (a setting the engine chose on purpose,
ADR-0003) on every `agentloop ask`, "cannot use buft 'CPU_REPACK'" for each tensor of an adapter at a swap.
Routed here instead, they become structured, masked records like every other; the `llama.cpp` logger starts
at ERROR, what `verbose=False` meant, and `logging.getLogger("llama.cpp").setLevel(...)` shows more.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

LOGGER_NAME = "llama.cpp"
# ggml_log_level (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line).
_LEVELS = {0: logging.ERROR, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONTINUE = 5

logger = logging.getLogger(LOGGER_NAME)
_state = {"last": logging.ERROR}
_installed: list[Any] = []  # the ctypes callback, kept alive for as long as llama.cpp may call it


def python_level(ggml_level: int) -> int:
    """The logging level of a llama.cpp line; a continuation keeps the level of the line it continues."""
    if ggml_level == _CONTINUE:
        return _state["last"]
    level = _LEVELS.get(ggml_level, logging.ERROR)
    _state["last"] = level
    return level


def forward(ggml_level: int, text: bytes) -> None:
    """One llama.cpp log call: to the `llama.cpp` logger when its level is enabled, else nowhere."""
    level = python_level(ggml_level)
    if logger.isEnabledFor(level):
        line = text.decode("utf-8", errors="replace").rstrip("\n")
        if line.strip():
            logger.log(level, "%s", line)


def route_llama_logs() -> None:
    """Install the callback (once per process); llama-cpp-python's own is replaced."""
    if _installed:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        forward(level, text)

    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _installed.append(callback)

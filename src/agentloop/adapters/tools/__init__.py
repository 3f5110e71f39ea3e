"""The built-in tools: calculator, python, read_file, write_file, list_files, current_time and fetch_url."""

from __future__ import annotations

from agentloop.adapters.tools.calculator import calculator_tool
from agentloop.adapters.tools.clock import clock_tool
from agentloop.adapters.tools.files import file_tools
from agentloop.adapters.tools.sandbox import SandboxLimits, bwrap_path, network_isolation_prefix, python_tool
from agentloop.adapters.tools.web import UrlFetcher, fetch_tool
from agentloop.application.tools import Tool
from agentloop.settings import Settings

# The tool's own deadline sits a little after the sandbox's, so the model sees "python timed out after Ns"
# (and the process group is killed) rather than the registry's generic timeout.
PYTHON_TIMEOUT_SLACK_S = 5.0


def builtin_tools(settings: Settings) -> list[Tool]:
    """Every built-in tool, configured from settings."""
    timeout = settings.tool_timeout_s
    limits = SandboxLimits(
        timeout_s=settings.python_timeout_s,
        memory_mb=settings.python_memory_mb,
        isolation_prefix=network_isolation_prefix(),
        bwrap=bwrap_path(),
    )
    allowed_hosts = tuple(host.strip().rstrip(".").lower() for host in settings.fetch_allowed_hosts)
    return [
        calculator_tool(timeout),
        python_tool(limits, timeout_s=settings.python_timeout_s + PYTHON_TIMEOUT_SLACK_S),
        *file_tools(timeout),
        clock_tool(timeout),
        fetch_tool(UrlFetcher(tuple(host for host in allowed_hosts if host), timeout), timeout),
    ]


__all__ = ["builtin_tools"]

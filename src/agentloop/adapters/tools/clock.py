"""current_time: the date, time and weekday in an IANA time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentloop.application.tools import Tool, ToolContext, ToolExample
from agentloop.errors import ToolError

# The model often writes these in lower case; the IANA database only knows the upper-case keys.
_UTC_ALIASES = {"utc", "gmt", "z", "zulu"}


def current_time(zone_name: str = "UTC", now: datetime | None = None) -> str:
    """Return e.g. '2025-03-14T09:26:53+01:00 (Friday, Europe/Paris)' for the given zone."""
    zone = _zone(zone_name.strip())
    moment = (now or datetime.now(UTC)).astimezone(zone).replace(microsecond=0)
    return f"{moment.isoformat()} ({moment:%A}, {zone.key})"


def _zone(name: str) -> ZoneInfo:
    if name.lower() in _UTC_ALIASES:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ToolError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from exc


async def _handle(arguments: dict[str, Any], ctx: ToolContext) -> str:
    return current_time(str(arguments.get("timezone", "UTC")))


def clock_tool(timeout_s: float) -> Tool:
    """The `current_time` tool."""
    return Tool(
        name="current_time",
        description="Get the current date, time and weekday in a time zone.",
        parameters={
            "type": "object",
            "properties": {
                "timezone": {"type": "string", "description": "IANA time zone name.", "default": "UTC"}
            },
            "required": [],
            "additionalProperties": False,
        },
        example=ToolExample(
            question="What time is it in Tokyo?",
            arguments={"timezone": "Asia/Tokyo"},
            result="2025-06-02T14:05:09+09:00 (Monday, Asia/Tokyo)",
            answer="In Tokyo it is 14:05 on Monday, 2 June 2025.",
        ),
        handler=_handle,
        timeout_s=timeout_s,
    )

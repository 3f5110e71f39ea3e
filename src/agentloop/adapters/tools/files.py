"""read_file, write_file and list_files, confined to the conversation's workspace folder."""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath
from typing import Any

from agentloop.application.tools import Tool, ToolContext, ToolExample
from agentloop.errors import ToolError

MAX_READ_BYTES = 100_000
MAX_WRITE_BYTES = 1_000_000
MAX_LISTED_ENTRIES = 200


def ensure_workspace(workspace: Path) -> Path:
    """Create the workspace if needed and return its real path."""
    workspace.mkdir(parents=True, exist_ok=True)
    return workspace.resolve()


def resolve_in_workspace(workspace: Path, path: str) -> Path:
    """Map a relative path to a real path inside the workspace; raise ToolError if it would leave it."""
    root = ensure_workspace(workspace)
    if not path.strip() or "\x00" in path:
        raise ToolError("path must be a non-empty relative path")
    relative = PurePosixPath(path)
    if relative.is_absolute():
        raise ToolError(f"absolute paths are not allowed: {path}")
    if ".." in relative.parts:
        raise ToolError(f"'..' is not allowed in paths: {path}")
    # resolve() follows symlinks, so a link inside the workspace that points outside it is caught here.
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ToolError(f"path leaves the workspace: {path}")
    return target


def read_file(workspace: Path, path: str) -> str:
    """Return a workspace file's text (at most MAX_READ_BYTES)."""
    target = resolve_in_workspace(workspace, path)
    if not target.is_file():
        raise ToolError(f"no such file: {path}")
    size = target.stat().st_size
    if size > MAX_READ_BYTES:
        raise ToolError(f"{path} is {size} bytes; read_file reads at most {MAX_READ_BYTES}")
    return target.read_bytes().decode("utf-8", errors="replace")


def write_file(workspace: Path, path: str, content: str) -> str:
    """Write text to a workspace file, creating folders as needed."""
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(f"content is {len(data)} bytes; write_file writes at most {MAX_WRITE_BYTES}")
    target = resolve_in_workspace(workspace, path)
    if target.is_dir():
        raise ToolError(f"{path} is a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"wrote {len(data)} bytes to {path}"


def list_files(workspace: Path, path: str = ".") -> str:
    """List a workspace folder's entries, sorted, folders with a trailing '/'."""
    target = resolve_in_workspace(workspace, path)
    if not target.is_dir():
        raise ToolError(f"no such folder: {path}")
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in target.iterdir())
    if not names:
        return "(empty)"
    shown = names[:MAX_LISTED_ENTRIES]
    if len(names) > len(shown):
        shown.append(f"[... {len(names) - len(shown)} more]")
    return "\n".join(shown)


async def _read(arguments: dict[str, Any], ctx: ToolContext) -> str:
    return await asyncio.to_thread(read_file, ctx.workspace, str(arguments["path"]))


async def _write(arguments: dict[str, Any], ctx: ToolContext) -> str:
    return await asyncio.to_thread(
        write_file, ctx.workspace, str(arguments["path"]), str(arguments["content"])
    )


async def _list(arguments: dict[str, Any], ctx: ToolContext) -> str:
    return await asyncio.to_thread(list_files, ctx.workspace, str(arguments.get("path", ".")))


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_PATH = {"type": "string", "description": "A path relative to the workspace."}


def file_tools(timeout_s: float) -> list[Tool]:
    """The `read_file`, `write_file` and `list_files` tools."""
    return [
        Tool(
            name="read_file",
            description="Read a text file from your workspace.",
            parameters=_object({"path": _PATH}, ["path"]),
            example=ToolExample(
                question="What is in notes.txt?",
                arguments={"path": "notes.txt"},
                result="Buy milk\nCall Anna",
                answer="notes.txt says: buy milk, call Anna.",
            ),
            handler=_read,
            timeout_s=timeout_s,
        ),
        Tool(
            name="write_file",
            description="Write text to a file in your workspace, replacing it if it exists.",
            parameters=_object({"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
            example=ToolExample(
                question="Save 'hello' to greeting.txt.",
                arguments={"path": "greeting.txt", "content": "hello"},
                result="wrote 5 bytes to greeting.txt",
                answer="Saved 'hello' to greeting.txt.",
            ),
            handler=_write,
            timeout_s=timeout_s,
        ),
        Tool(
            name="list_files",
            description="List the files in a folder of your workspace.",
            parameters=_object({"path": {**_PATH, "default": "."}}, []),
            example=ToolExample(
                question="Which files do I have?",
                arguments={"path": "."},
                result="data/\nnotes.txt",
                answer="You have a data/ folder and notes.txt.",
            ),
            handler=_list,
            timeout_s=timeout_s,
        ),
    ]

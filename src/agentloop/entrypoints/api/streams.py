"""Stop generating when the client goes away: for awaited handlers and for streamed responses."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse
from starlette.types import Send

T = TypeVar("T")
StreamT = TypeVar("StreamT", bound=AsyncIterable[Any])


class ClientGone(HTTPException):
    """The client disconnected before the answer was ready (nginx's 499); nobody reads the response."""

    def __init__(self) -> None:
        super().__init__(499, "client closed request")


async def _disconnected(request: Request) -> None:
    # The body is already read, so the next receive() only returns once the client disconnects.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and the generation inside) if the client disconnects first.

    Uvicorn does not cancel a handler when its client leaves, so without this a dropped request would keep the
    model busy until the turn ends.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone


@contextlib.asynccontextmanager
async def closing(iterator: StreamT) -> AsyncIterator[StreamT]:
    """`contextlib.aclosing` for anything typed only as an async iterable (generators, at runtime)."""
    try:
        yield iterator
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            # Shielded: closing is what makes the engine stop, so it must run even in a cancelled scope.
            with anyio.CancelScope(shield=True):
                await close()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its generator, so a dropped client stops the generation
    at once rather than whenever the garbage collector finalises the generator."""

    async def stream_response(self, send: Send) -> None:
        # ASGI 2.4 servers report a gone client by failing send(): nobody is left to tell.
        async with closing(self.body_iterator):
            with contextlib.suppress(OSError):
                await super().stream_response(send)


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event carrying JSON (or a literal such as [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"

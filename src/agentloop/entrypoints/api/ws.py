"""WebSocket /api/v1/conversations/{id}/ws: send messages, receive the turn as a stream of JSON events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from agentloop.application.agent import TokenStreamed, ToolCalled, ToolReturned, TurnEvent, TurnFinished
from agentloop.bootstrap import Container
from agentloop.domain.auth import Principal
from agentloop.entrypoints.api.deps import ContainerDep
from agentloop.entrypoints.api.errors import problem_from
from agentloop.entrypoints.api.schemas import TurnOut
from agentloop.entrypoints.api.security import authenticate, socket_token
from agentloop.entrypoints.api.streams import closing
from agentloop.errors import AgentLoopError, NotFoundError, ValidationError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["native"])

CLOSE_NOT_FOUND = 4404
CLOSE_POLICY_VIOLATION = 1008


def _token(event: TokenStreamed) -> dict[str, Any]:
    return {"type": "token", "text": event.text}


def _tool_call(event: ToolCalled) -> dict[str, Any]:
    call = event.call
    return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}


def _tool_result(event: ToolReturned) -> dict[str, Any]:
    result = event.result
    return {
        "type": "tool_result",
        "id": result.call_id,
        "name": result.name,
        "output": result.output,
        "ok": result.ok,
    }


def _final(event: TurnFinished) -> dict[str, Any]:
    turn = TurnOut.of(event)
    return {
        "type": "final",
        "answer": turn.answer,
        "message_id": turn.message_id,
        "steps": [step.model_dump() for step in turn.steps],
        "usage": turn.usage.model_dump(),
        "model_version": turn.model_version,
        "latency_ms": turn.latency_ms,
    }


ENCODERS: dict[type, Any] = {
    TokenStreamed: _token,
    ToolCalled: _tool_call,
    ToolReturned: _tool_result,
    TurnFinished: _final,
}


def encode(event: TurnEvent) -> dict[str, Any]:
    return dict(ENCODERS[type(event)](event))


def parse_message(raw: str) -> str:
    """A message is JSON `{"content": "..."}`, or plain text that does not look like JSON."""
    if not raw.lstrip().startswith(("{", "[", '"')):
        return raw
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"malformed JSON message: {exc.msg} at position {exc.pos}", field="body"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("content"), str):
        raise ValidationError('a message must be {"content": "<text>"}', field="content")
    return str(data["content"])


def error_event(exc: Exception) -> dict[str, Any]:
    problem = problem_from(exc)
    event: dict[str, Any] = {"type": "error", "detail": problem.message, "status": problem.status}
    if problem.field is not None:
        event["field"] = problem.field
    return event


async def _read(websocket: WebSocket, inbox: asyncio.Queue[str | None]) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            await inbox.put(
                text if text is not None else (message.get("bytes") or b"").decode("utf-8", "replace")
            )
    finally:
        await inbox.put(None)


async def _turn(
    websocket: WebSocket, container: Container, conversation_id: str, raw: str, principal: Principal
) -> None:
    try:
        # Each message is a request of its own for the per-user rate limit (over HTTP it would be one).
        if container.settings.auth_enabled:
            await container.limiter.hit("user", principal.user_id)
        text = parse_message(raw)
        turn = container.agents.run_turn(conversation_id, text)
        with container.metrics.conversation_active(conversation_id):
            async with closing(turn) as events:
                async for event in events:
                    await websocket.send_json(encode(event))
    except (WebSocketDisconnect, NotFoundError):
        raise  # the client or the conversation is gone: the socket closes
    except Exception as exc:
        if problem_from(exc).status >= 500:
            logger.error("turn failed on conversation %s", conversation_id, exc_info=exc)
        await websocket.send_json(error_event(exc))


async def _serve(
    websocket: WebSocket, container: Container, conversation_id: str, principal: Principal
) -> None:
    inbox: asyncio.Queue[str | None] = asyncio.Queue()
    reader = asyncio.create_task(_read(websocket, inbox))
    try:
        while (raw := await inbox.get()) is not None:
            turn = asyncio.create_task(_turn(websocket, container, conversation_id, raw, principal))
            await asyncio.wait({turn, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                # The reader only finishes when the client has gone: stop generating for nobody.
                turn.cancel()
                await asyncio.gather(turn, return_exceptions=True)
                return
            turn.result()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


@router.websocket("/conversations/{conversation_id}/ws")
async def conversation_socket(websocket: WebSocket, conversation_id: str, container: ContainerDep) -> None:
    """Stream turns: send {"content": ...}; get token, tool_call, tool_result, final (or error) events.
    Authenticate with `?access_token=<token or API key>` (or an Authorization header)."""
    await websocket.accept()
    try:
        principal = await authenticate(websocket, container, socket_token(websocket))
    except AgentLoopError as exc:
        await websocket.send_json(error_event(exc))
        await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=str(exc)[:120])
        return
    try:
        if not principal.owns(await container.store.conversation_owner(conversation_id)):
            raise NotFoundError("conversation", conversation_id)
        await _serve(websocket, container, conversation_id, principal)
    except NotFoundError as exc:
        await websocket.send_json(error_event(exc))
        await websocket.close(code=CLOSE_NOT_FOUND, reason=str(exc))
        return
    except WebSocketDisconnect:
        return
    if websocket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close()

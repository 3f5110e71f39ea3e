"""The HTTP and WebSocket API: native /api/v1 routes, an OpenAI-compatible /v1, and health checks."""

from agentloop.entrypoints.api.app import create_app

__all__ = ["create_app"]

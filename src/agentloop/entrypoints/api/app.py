"""The FastAPI application: the lifespan owns the container (model, database, tools); routers do the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from agentloop.adapters.logs import configure_logging
from agentloop.bootstrap import bootstrap
from agentloop.entrypoints.api import auth, health, learning, native, observability, openai, ws
from agentloop.entrypoints.api.errors import install_error_handlers
from agentloop.entrypoints.api.observability import RequestContext
from agentloop.entrypoints.api.security import current_principal, install_security
from agentloop.entrypoints.web import install_web
from agentloop.settings import Settings

TITLE = "Gemma Agent Loop"


def create_app(settings: Settings | None = None, **overrides: Any) -> FastAPI:
    """Build the app; `overrides` go to `bootstrap` (e.g. `engine=FakeEngine(...)` in tests)."""
    resolved = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(resolved.log_level, resolved.log_json)
        async with bootstrap(resolved, **overrides) as container:
            app.state.container = container
            try:
                yield
            finally:
                del app.state.container

    app = FastAPI(
        title=TITLE,
        description="A local agent server on a small Gemma model: tools, conversations, and an "
        "OpenAI-compatible endpoint.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
    )
    install_error_handlers(app)
    install_security(app, resolved)
    for router in (native.router, learning.router, ws.router, health.router, auth.router):
        app.include_router(router)
    # Every OpenAI-compatible route needs a caller: a user's access token or a service's API key.
    app.include_router(openai.router, dependencies=[Depends(current_principal)])
    app.include_router(observability.router)
    install_web(app)
    app.add_middleware(RequestContext)
    return app

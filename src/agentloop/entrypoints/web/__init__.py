"""The web page at `/`: one static HTML file, a script and a style sheet, no build step and nothing fetched
from elsewhere. It talks to the same REST and WebSocket API as every other client."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The single-page app: chat, models and training."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def install_web(app: FastAPI) -> None:
    """Serve the page at / and its script and styles under /static."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

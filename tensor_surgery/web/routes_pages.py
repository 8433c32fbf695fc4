"""The single page, its static files, and Plotly served from the installed `plotly` package
(the page loads no external URL)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from .. import __version__
from ..errors import SurgeryError

# The page ships inside the package (package data), so a non-editable install serves it too.
PAGE_DIR = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=str(PAGE_DIR / "templates"))
STATIC_DIR = PAGE_DIR / "static"

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def plotly_js_path() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise SurgeryError(f"plotly.min.js is missing from the installed plotly package ({path})")
    return path


@router.get("/", response_class=HTMLResponse)
def index(request: Request):
    ws = request.app.state.workspace
    return TEMPLATES.TemplateResponse(
        request,
        "index.html",
        {
            "version": __version__,
            "model_name": ws.current.name if ws.current else None,
            "open_error": ws.open_error.message if ws.open_error else None,
            "agent_enabled": bool(request.app.state.settings.llm_model),
        },
    )


@router.get("/vendor/plotly.min.js")
def plotly_js():
    return FileResponse(plotly_js_path(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

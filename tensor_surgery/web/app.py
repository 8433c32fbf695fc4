"""The FastAPI application: one place that lists every router, the middleware, the lifespan."""

from __future__ import annotations

import os
import secrets
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..agent.llm import warm_up
from ..agent.session import Investigator
from ..agent.store import ConversationStore
from ..jobs import JobRunner
from ..settings import Settings
from ..surgery.journal import Journal
from ..surgery.library import PatchLibrary
from ..surgery.staging import StagedOverlays, Staging
from ..workspace import Workspace
from ..live.service import LiveService
from . import routes_agent, routes_edits, routes_export, routes_live, routes_model, routes_pages, routes_patches, routes_tensors
from . import routes_recovery, routes_transplant
from . import routes_diff
from . import routes_packs
from . import routes_analysis
from . import routes_clustering
from . import routes_lens, routes_steering
from .compression import NegotiatedGZipMiddleware
from .errors import install_error_handlers
from .security import SecurityMiddleware

ROUTERS = [
    routes_pages.router,
    routes_model.router,
    routes_recovery.router,
    routes_tensors.router,
    routes_edits.router,
    routes_patches.router,
    routes_export.router,
    routes_live.router,
    routes_live.ws_router,
    routes_agent.router,
    routes_transplant.router,
    routes_diff.router,
    routes_packs.router,
    routes_analysis.router,
    routes_clustering.router,
    routes_steering.router,
    routes_lens.router,
]

DESCRIPTION = """Look inside `.safetensors` model weights and change them on purpose.

Errors are JSON `{"error": {"code", "message", ...context}}` with a 4xx status; a 5xx is a bug.
Only loopback Hosts are served on a loopback bind; state-changing requests and WebSockets must
come from this server's own origin."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    if not settings.is_loopback and not token:
        token = secrets.token_urlsafe(24)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(settings.resolved_database_url)
    workspace = Workspace(settings, overlay_provider=StagedOverlays(journal))
    staging = Staging(workspace, journal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        workspace.open_default()
        routes_export.clean_leftovers_at_start(settings, workspace, app.state.jobs)
        warm_up(settings)  # the agent's LLM client loads in the background: the first question need not wait
        yield
        app.state.live.close()
        workspace.close()
        journal.close()

    app = FastAPI(title="Tensor Surgery", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.workspace = workspace
    app.state.token = token
    app.state.staging = staging
    app.state.library = PatchLibrary(settings.patch_dir)
    app.state.jobs = JobRunner(store=settings.data_dir / "jobs")  # kept on disk: a kill is reported, not forgotten
    app.state.investigator = Investigator(workspace, ConversationStore(journal.engine), settings)
    app.state.live = LiveService(workspace, staging, settings)
    workspace.switch_listeners.append(app.state.live.model_switched)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=routes_pages.STATIC_DIR), name="static")
    app.add_middleware(NegotiatedGZipMiddleware, minimum_size=8192)
    # added last, so it runs first: nothing is answered before Host/Origin/token checks
    app.add_middleware(SecurityMiddleware, loopback_only=settings.is_loopback, token=token)
    return app

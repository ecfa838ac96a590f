"""`create_app(runtime, server_config)`: the FastAPI application, built fresh each call.

Every API route is registered at `/x` and `/api/x`; internal routes at `/internal/x` only; the
frontend's static files at `/` (spec §1.1). The queue store, websocket hub and dispatcher live
on `app.state.diffmesh` and start/stop with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from diffmesh.server.config import ServerConfig
from diffmesh.server.dispatcher import Dispatcher
from diffmesh.server.routes import extensions
from diffmesh.server.runtime_ref import RuntimeRef, RuntimeUnavailable
from diffmesh.config.paths import UnsafePath
from diffmesh.server.schemas import install_openapi
from diffmesh.server.security import GuardMiddleware
from diffmesh.server.store import QueueStore
from diffmesh.server.ws import ConnectionHub

log = logging.getLogger("diffmesh.server")


@dataclass
class ServerState:
    config: ServerConfig
    runtime: RuntimeRef
    store: QueueStore
    hub: ConnectionHub
    dispatcher: Dispatcher
    early_paths: Any  # Paths built by the CLI, used until the runtime (and its .paths) is ready
    settings_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def paths(self):
        runtime = self.runtime.peek()
        paths = getattr(runtime, "paths", None) if runtime is not None else None
        return paths if paths is not None else self.early_paths or self.runtime.get().paths

    @property
    def user_root(self) -> Path:
        """Single-user storage (`<user dir>/default`), spec §1.2 users/settings/userdata."""
        return Path(self.paths.user_dir) / "default"

    def feature_flags(self) -> dict:
        # ComfyUI's core flags; what diffmesh lacks is off (no assets database, no node replacements)
        return {"supports_preview_metadata": True, "supports_model_type_tags": False,
                "max_upload_size": self.config.max_upload_bytes, "extension": {"manager": {"supports_v4": True}},
                "node_replacements": False, "assets": False}


def create_app(runtime: Any, server_config: ServerConfig, paths: Any = None, pack_server: Any = None) -> FastAPI:
    """Builds the app. `runtime` is a built Runtime or a `RuntimeRef` that builds it in the
    background; `paths` (a `diffmesh.config.paths.Paths`) serves files before the runtime is ready;
    `pack_server` (diffmesh.compat.PackServer) holds the custom node packs' routes and web folders
    (default: the built runtime's)."""
    ref = RuntimeRef.of(runtime)
    paths = paths if paths is not None else getattr(ref.peek(), "paths", None)
    if paths is None:
        raise ValueError("create_app needs `paths` when the runtime is built in the background")
    db_path = server_config.state_db or Path(paths.user_dir) / "diffmesh" / "queue.sqlite3"
    store = QueueStore(db_path, history_cap=server_config.max_history)
    state = ServerState(config=server_config, runtime=ref, store=store, hub=None, dispatcher=None,  # type: ignore[arg-type]
                        early_paths=paths)
    state.hub = ConnectionHub(state.feature_flags())
    state.dispatcher = Dispatcher(store, ref, state.hub, server_config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.hub.bind_loop(asyncio.get_running_loop())
        _prepare_folders(paths)
        repaired = await asyncio.to_thread(store.repair)
        if repaired:
            log.warning("repaired %d stored queue/history row(s) an older version could not serve", repaired)
        ref.start()
        state.dispatcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.dispatcher.stop)
            store.close()
            await asyncio.to_thread(_close_runtime, ref)

    app = FastAPI(title="diffmesh", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.diffmesh = state
    _install_error_handlers(app)
    _install_routes(app)
    extensions.install(app, state.hub, pack_server if pack_server is not None else _packs_of(ref.peek()))
    install_openapi(app)
    app.add_middleware(GuardMiddleware, config=server_config)
    return app


def _install_routes(app: FastAPI) -> None:
    from diffmesh.server import frontend
    from diffmesh.server.routes import (files, internal, jobs, nodes, queue, subgraphs, system, templates, users,
                                        websocket)

    for module in (queue, nodes, files, system, users, subgraphs):
        router = module.router()
        app.include_router(router)
        app.include_router(router, prefix="/api")
    app.include_router(jobs.router(), prefix="/api")
    app.include_router(internal.router(), prefix="/internal")
    templates.install(app)
    ws_router = websocket.router()
    app.include_router(ws_router)
    app.include_router(ws_router, prefix="/api")
    frontend.mount(app)


def _packs_of(runtime: Any):
    """The PackServer a prebuilt runtime loaded its custom nodes with (a fresh one otherwise)."""
    from diffmesh.compat import PackServer

    layer = getattr(getattr(runtime, "custom_nodes", None), "layer", None)
    return layer.server if layer is not None else PackServer()


def _close_runtime(ref: RuntimeRef) -> None:
    runtime = ref.peek()
    if runtime is not None and hasattr(runtime, "close"):
        try:
            runtime.close()
        except Exception:
            log.exception("closing the runtime failed")


def _prepare_folders(paths) -> None:
    for folder in (paths.input_dir, paths.output_dir, paths.user_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    for sub in ("workflows", "subgraphs"):  # the frontend lists these at boot
        (Path(paths.user_dir) / "default" / sub).mkdir(parents=True, exist_ok=True)
    temp = Path(paths.temp_dir)
    if temp.is_dir() and temp.name == "temp":  # spec §9.10: the temp folder is emptied at start
        shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True, exist_ok=True)


def error_body(kind: str, message: str, details: str = "", **extra: Any) -> dict:
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": extra}}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        body = detail if isinstance(detail, dict) else error_body(
            "not_found" if exc.status_code == 404 else "http_error", str(detail),
            f"{request.method} {request.url.path}")
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body("bad_request", "request parameters are invalid", str(exc.errors())[:2000]),
                            status_code=400)

    @app.exception_handler(UnsafePath)
    async def unsafe_path(request: Request, exc: UnsafePath):
        return JSONResponse(error_body("forbidden_path", str(exc), "use a name inside the folder"), status_code=403)

    @app.exception_handler(RuntimeUnavailable)
    async def not_ready(request: Request, exc: RuntimeUnavailable):
        return JSONResponse(error_body("runtime_unavailable", str(exc)), status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", f"{type(exc).__name__}: {exc}",
                                       f"{request.method} {request.url.path}; see the server log"), status_code=500)

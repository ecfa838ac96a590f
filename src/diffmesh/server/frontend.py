"""The official web UI (`comfyui-frontend-package`) served as static files at `/` (spec §1.1)."""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from starlette.staticfiles import StaticFiles

from diffmesh.server import packages

log = logging.getLogger("diffmesh.server")

NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}


def static_root() -> Path | None:
    try:
        root = Path(str(importlib.resources.files("comfyui_frontend_package") / "static"))
    except ModuleNotFoundError:
        return None
    return root if (root / "index.html").is_file() else None


class _StaticFiles(StaticFiles):
    """Static files with the frontend's cache rules: scripts and styles revalidate."""

    def file_response(self, full_path, stat_result, scope, status_code=200):
        response = super().file_response(full_path, stat_result, scope, status_code)
        if str(full_path).endswith((".js", ".css", ".json", ".html")):
            response.headers["Cache-Control"] = "no-cache"
        return response


def mount(app: FastAPI) -> None:
    root = static_root()
    if root is None:
        log.warning("comfyui-frontend-package is not installed: the web UI is not served "
                    "(pip install %s==%s)", packages.FRONTEND, packages.FRONTEND_VERSION)

        async def no_frontend():
            return JSONResponse({"error": {"type": "no_frontend", "message": "the web UI is not installed",
                                           "details": f"pip install {packages.FRONTEND}=={packages.FRONTEND_VERSION}",
                                           "extra_info": {}}}, status_code=404)

        app.add_api_route("/", no_frontend, methods=["GET"])
        return

    async def index():
        return FileResponse(root / "index.html", headers=NO_CACHE, media_type="text/html")

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.mount("/", _StaticFiles(directory=root), name="frontend")

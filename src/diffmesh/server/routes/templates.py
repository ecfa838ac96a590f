"""The template browser's files and the node docs, where ComfyUI serves them: `/templates/<name>`
(workflows, indexes, thumbnails of the workflow-templates packages) and `/docs/<Node>/<locale>.md`
(comfyui-embedded-docs). Neither has the `/api` prefix, as in ComfyUI."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from diffmesh.server import packages
from diffmesh.server.routes.common import fail


def install(app: FastAPI) -> None:
    """Adds both; call before the frontend's catch-all mount at `/`."""
    assets = packages.template_assets()          # name -> file, fixed for the server's life
    r = APIRouter()

    async def template_file(name: str):
        path = assets.get(name)
        if path is None:
            raise fail(404, "not_found", f"no workflow template file {name!r}",
                       f"install {packages.TEMPLATES}=={packages.TEMPLATES_VERSION} for the template thumbnails"
                       if name.endswith((".webp", ".png", ".jpg", ".mp4", ".mp3")) else "")
        return FileResponse(path)

    r.add_api_route("/templates/{name:path}", template_file, methods=["GET"])
    app.include_router(r)
    docs = packages.docs_root()
    if docs is not None:
        app.mount("/docs", StaticFiles(directory=docs), name="embedded-docs")

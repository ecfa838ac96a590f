"""Custom node packs on the HTTP server: their web extensions and their own endpoints.

- `GET /extensions` lists every `.js` file under each pack's `WEB_DIRECTORY` as
  `/extensions/<pack>/<relative path>` (ComfyUI's listing; the frontend imports each one), and
  `/extensions/<pack>/...` serves those folders (other `/extensions/...` paths, such as the
  frontend's own `extensions/core`, go on to the static frontend); folders a pack serves with
  `PromptServer.instance.routes.static(prefix, folder)` are served under their prefix.
- Routes a pack put on `PromptServer.instance.routes` answer at their path and under `/api`, as in
  ComfyUI. A core route with the same path wins (ComfyUI registers core routes first). The handler
  gets an aiohttp-style request and may return aiohttp-style responses (`diffmesh.compat`), which
  are turned into Starlette responses here. Both run inside the access checks (`GuardMiddleware`
  wraps this middleware).

The packs' routes and folders are filled while the runtime builds in the background, so both are
looked up on every request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Match, Mount

from diffmesh.config.paths import UnsafePath, safe_join

log = logging.getLogger("diffmesh.server.extensions")


def install(app, hub: Any, packs: Any) -> None:
    """Attach the websocket hub to the packs' `send_sync` and serve their routes and folders."""
    packs.attach(hub)
    app.state.diffmesh_packs = packs
    app.add_middleware(PackRoutes, packs=packs, core=app)


def extension_files(request: Request) -> list[str]:
    """`GET /extensions`: the packs' web extension scripts."""
    packs = request.app.state.diffmesh_packs
    files = []
    for name, folder in list(packs.web_dirs.items()):
        for script in sorted(Path(folder).rglob("*.js")):
            files.append(f"/extensions/{quote(name)}/{script.relative_to(folder).as_posix()}")
    return files


def to_response(result: Any) -> Response:
    """A Starlette response from what a pack's handler gave (aiohttp-style or Starlette)."""
    if isinstance(result, Response):
        return result
    status = int(getattr(result, "status", 200))
    headers = {str(k): str(v) for k, v in dict(getattr(result, "headers", None) or {}).items()
               if str(k).lower() not in ("content-length", "content-type")}
    path = getattr(result, "file_path", None) or getattr(result, "_path", None)
    if path is not None:
        return FileResponse(path, status_code=status, headers=headers)
    body = getattr(result, "body", None)
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = getattr(body, "_value", b"")        # a real aiohttp payload object
    if body is None and isinstance(getattr(result, "text", None), str):
        body = result.text.encode()
    return Response(content=bytes(body or b""), status_code=status, headers=headers,
                    media_type=getattr(result, "content_type", None))


class PackRoutes:
    """ASGI middleware: pack static folders and pack endpoints, else the app's own routes."""

    def __init__(self, app, packs: Any, core: Any):
        self.app = app
        self.packs = packs
        self.core = core

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self._static(scope)
        if response is None and self.packs.routes:
            found = self.packs.match(scope["method"], scope["path"])
            if found is not None and not self._core_route(scope):
                response = await self._call(found[0], found[1], Request(scope, receive))
        if response is None:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _static(self, scope) -> Response | None:
        found = self.packs.static_file(scope["path"]) if scope["method"] in ("GET", "HEAD") else None
        if found is None:
            return None
        folder, name = found
        try:
            target = safe_join(folder, name)
        except UnsafePath:
            return JSONResponse(_error("forbidden_path", "path leaves the pack's web folder"), status_code=403)
        if not target.is_file():
            return JSONResponse(_error("not_found", f"no file {name!r} in {scope['path'].removesuffix(name)}"),
                                status_code=404)
        return FileResponse(target, headers={"Cache-Control": "no-cache"})

    def _core_route(self, scope) -> bool:
        for route in self.core.router.routes:
            if isinstance(route, Mount) and route.path == "":
                continue                               # the static frontend
            if route.matches(scope)[0] == Match.FULL:
                return True
        return False

    async def _call(self, route, match_info: dict, request: Request) -> Response:
        from diffmesh.compat.shims.server import Request as PackRequest

        try:
            with self.packs.imports():
                result = await route.handler(PackRequest(request, match_info))
        except Exception as exc:  # noqa: BLE001 - the pack's own failure becomes its answer
            if isinstance(getattr(exc, "status", None), int):
                return to_response(exc)                # aiohttp's HTTP errors are raised responses
            log.error("route %s %s of custom node pack %s failed: %s: %s", route.method, route.path,
                      route.pack or "?", type(exc).__name__, exc)
            return JSONResponse(_error("custom_route_error", f"{type(exc).__name__}: {exc}",
                                       f"route {route.path} of custom node pack {route.pack or '?'}"), status_code=500)
        return to_response(result)


def _error(kind: str, message: str, details: str = "") -> dict:
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}}

"""`server.PromptServer.instance` and, when aiohttp is not installed, the few `aiohttp.web` names a
pack uses to declare its own endpoints.

Why a stand-in rather than the aiohttp dependency: diffmesh serves HTTP with Starlette; a pack's
endpoint is only a route table entry, a handler `async def h(request)` and a response, and those
map one to one onto Starlette (`diffmesh.server.routes.extensions` runs them). Installing aiohttp
(seven packages) would give packs a second HTTP stack that never listens. When aiohttp *is*
installed it is left alone (packs may use its client) and its responses are converted the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffmesh.compat.modules import new_module
from diffmesh.compat.pack_server import RouteDef


class RouteTableDef:
    """aiohttp's route table: `@routes.get("/path")` collects handlers; a table bound to a
    `PackServer` (PromptServer.instance.routes) registers them with the server."""

    def __init__(self, server: Any = None, layer: Any = None):
        self._routes: list[RouteDef] = []
        self._server = server
        self._layer = layer

    def route(self, method: str, path: str, **kwargs):
        def register(handler):
            route = RouteDef(method.upper(), path, handler, getattr(self._layer, "loading_pack", "") or "")
            self._routes.append(route)
            if self._server is not None:
                self._server.add_route(route)
            return handler
        return register

    def get(self, path: str, **kwargs):
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self.route("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs):
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.route("DELETE", path, **kwargs)

    def head(self, path: str, **kwargs):
        return self.route("HEAD", path, **kwargs)

    def view(self, path: str, **kwargs):
        return self.route("*", path, **kwargs)

    def static(self, prefix: str, path, **kwargs) -> None:
        """Serve the folder `path` under the URL `prefix` (aiohttp's `routes.static`)."""
        if self._server is not None:
            self._server.static_dirs[prefix] = Path(path).resolve()

    def __iter__(self):
        return iter(list(self._routes))

    def __len__(self) -> int:
        return len(self._routes)


class Query:
    """aiohttp's `request.query` (a multidict) over Starlette's query parameters."""

    def __init__(self, params):
        self._params = params

    def get(self, key: str, default: Any = None):
        return self._params.get(key, default)

    def getall(self, key: str, default: Any = None):
        values = self._params.getlist(key)
        if not values and default is None:
            raise KeyError(key)
        return values or default

    getone = get

    def __getitem__(self, key: str):
        return self._params[key]

    def __contains__(self, key: object) -> bool:
        return key in self._params

    def __iter__(self):
        return iter(self._params.keys())

    def __len__(self) -> int:
        return len(self._params)

    def keys(self):
        return self._params.keys()

    def items(self):
        return self._params.multi_items()


class Request:
    """What a pack's handler receives: aiohttp's request names over a Starlette request."""

    def __init__(self, request: Any, match_info: dict[str, str]):
        self._request = request
        self.match_info = dict(match_info)
        self.method = request.method
        self.path = request.url.path
        self.headers = request.headers
        self.cookies = request.cookies
        self.query = Query(request.query_params)
        self.rel_url = type("URL", (), {"path": self.path, "query": self.query,
                                        "query_string": request.url.query})()
        self.content_type = (request.headers.get("content-type") or "").split(";")[0].strip()

    @property
    def can_read_body(self) -> bool:
        return self.method not in ("GET", "HEAD")

    async def read(self) -> bytes:
        return await self._request.body()

    async def text(self) -> str:
        return (await self._request.body()).decode("utf-8")

    async def json(self, *, loads=json.loads) -> Any:
        return loads(await self.text())

    async def post(self):
        return await self._request.form()


class Response(Exception):
    """aiohttp's Response (also an exception, as its HTTP errors are)."""

    status_code = 200

    def __init__(self, *, body: bytes | str | None = None, status: int | None = None, reason: str | None = None,
                 text: str | None = None, headers: dict | None = None, content_type: str | None = None,
                 charset: str | None = None):
        super().__init__(reason or "")
        self.status = int(status if status is not None else self.status_code)
        self.reason = reason
        self.headers = dict(headers or {})
        if text is not None:
            body, content_type = text, content_type or "text/plain"
        self.body = body.encode(charset or "utf-8") if isinstance(body, str) else body
        self.content_type = content_type or ("text/plain" if self.status >= 400 else "application/octet-stream")
        self.text = self.body.decode(charset or "utf-8", "replace") if self.body is not None else None


def json_response(data: Any = None, *, text: str | None = None, body: bytes | None = None, status: int = 200,
                  reason: str | None = None, headers: dict | None = None, content_type: str = "application/json",
                  dumps=json.dumps) -> Response:
    if body is None and text is None:
        text = dumps(data)
    return Response(text=text, body=body, status=status, reason=reason, headers=headers, content_type=content_type)


class FileResponse(Response):
    def __init__(self, path, chunk_size: int = 256 * 1024, status: int = 200, reason: str | None = None,
                 headers: dict | None = None):
        super().__init__(status=status, reason=reason, headers=headers)
        self.file_path = Path(path)


def _http_error(name: str, code: int):
    def __init__(self, *, text: str | None = None, headers: dict | None = None, reason: str | None = None,
                 location: str | None = None, **kwargs):
        headers = dict(headers or {})
        if location is not None:
            headers["Location"] = str(location)
        Response.__init__(self, text=text if text is not None else f"{code}: {reason or name}", status=code,
                          reason=reason, headers=headers, **kwargs)
    return type(name, (Response,), {"status_code": code, "__init__": __init__})


HTTP_ERRORS = {name: _http_error(name, code) for name, code in (
    ("HTTPFound", 302), ("HTTPSeeOther", 303), ("HTTPBadRequest", 400), ("HTTPUnauthorized", 401),
    ("HTTPForbidden", 403), ("HTTPNotFound", 404), ("HTTPMethodNotAllowed", 405), ("HTTPConflict", 409),
    ("HTTPRequestEntityTooLarge", 413), ("HTTPInternalServerError", 500), ("HTTPServiceUnavailable", 503))}


def build_aiohttp(layer):
    return new_module("aiohttp", "diffmesh's stand-in: only aiohttp.web's server names (install aiohttp for "
                                 "its client).", package=True)


def build_web(layer):
    module = new_module("aiohttp.web", "aiohttp.web's route table, request and responses over Starlette.")
    for item in (RouteTableDef, Request, Response, FileResponse, json_response):
        setattr(module, item.__name__, item)
    module.HTTPException = Response
    module.StreamResponse = Response
    for name, cls in HTTP_ERRORS.items():
        setattr(module, name, cls)
    return module


class PromptServerInstance:
    """`PromptServer.instance`: send_sync, the route table and the running prompt's client."""

    def __init__(self, layer):
        self._server = layer.server
        self.routes = RouteTableDef(layer.server, layer)

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        self._server.send(event, data, sid)

    @property
    def client_id(self) -> str | None:
        from diffmesh.nodes.custom import current_context

        ctx = current_context()
        return ctx.extra_data.get("client_id") if ctx is not None else None

    @property
    def last_node_id(self) -> str | None:
        from diffmesh.nodes.custom import current_context

        ctx = current_context()
        return ctx.node_id if ctx is not None else None


def build_server(layer):
    module = new_module("server", "ComfyUI's `server` module: PromptServer.instance (diffmesh).")
    module.PromptServer = type("PromptServer", (), {"instance": PromptServerInstance(layer),
                                                    "__doc__": "Use PromptServer.instance."})
    return module

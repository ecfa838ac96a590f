"""Request guards, as one pure ASGI middleware so they cover HTTP and the websocket alike, in
this order: the Host check of a token-less server (only loopback names and addresses, against DNS
rebinding), the origin check (ComfyUI's loopback rule, or exactly the `--enable-cors-header`
origin), CORS preflights (answered before auth: browsers never send credentials in them), the
access token, JSON content types on state-changing routes for browser requests, and the body
size limit.
"""

from __future__ import annotations

import hmac
import json
import logging
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from diffmesh.server.config import ServerConfig, host_header_is_loopback, host_is_loopback

log = logging.getLogger("diffmesh.server.security")

TOKEN_COOKIE = "diffmesh_token"
CORS_METHODS = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
CORS_HEADERS = "Content-Type, Authorization"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes whose bodies are JSON and whose frontend (1.35.9 and 1.58.1, src/scripts/api.ts) sends
# `Content-Type: application/json`: a browser request with another type is a cross-site form or
# `fetch` without preflight, never the UI. /settings gets text/plain from the UI (a string body
# without a header), /userdata raw bodies, /jobs/{id}/cancel no body; uploads are multipart.
JSON_ROUTES = frozenset({"/prompt", "/queue", "/history", "/interrupt", "/free", "/users", "/jobs/cancel",
                         "/internal/logs/subscribe"})
TEXT_OR_JSON_ROUTES = ("/settings",)


class BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    def __init__(self, app, config: ServerConfig):
        self.app = app
        self.config = config

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.config.auth_token and not host_header_is_loopback(headers.get("host")):
            return await _reject(scope, send, 403, f"Host {headers.get('host', '')[:80]!r} refused: a server "
                                 "without an access token answers only requests addressed to localhost, 127.0.0.1 "
                                 "or [::1] (start it with --auth-token to serve other names)")
        refusal = self._origin_refusal(headers)
        if refusal:
            return await _reject(scope, send, 403, refusal)
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            return await self._options(send, headers)
        token_state = self._check_token(scope, headers)
        if token_state is False:
            return await _reject(scope, send, 401, "missing or wrong access token: send header "
                                 "'Authorization: Bearer <token>' or add ?token=<token> to the URL "
                                 "(the token is printed by `diffmesh serve` at start)", self._cors_headers(headers))
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        wrong_type = _content_type_refusal(scope, headers)
        if wrong_type:
            return await _reject(scope, send, 415, wrong_type, self._cors_headers(headers))
        limit = self.config.max_upload_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _too_large(scope, receive, send, limit)
        set_cookie = token_state == "query" and scope["type"] == "http"
        return await self._forward(scope, receive, send, limit, set_cookie, self._cors_headers(headers))

    def _origin_refusal(self, headers: dict) -> str | None:
        """Why the request's Origin is refused, or None. Without --enable-cors-header: ComfyUI's
        rule (a loopback Host must match the Origin). With ORIGIN: that origin or the server's own
        page only. With `*` (the flag's bare form): any origin, as ComfyUI."""
        allowed = self.config.cors_origin
        if allowed is None:
            if _origin_mismatch(headers):
                return ("cross-origin request refused: the Origin header does not match the Host (start the "
                        "server with --enable-cors-header ORIGIN to allow a page on another origin)")
            return None
        origin = headers.get("origin")
        if allowed == "*" or origin is None or _same_origin(origin, allowed) or not _origin_mismatch(headers, True):
            return None
        return (f"cross-origin request from {origin[:80]!r} refused: this server allows only {allowed!r} "
                "(--enable-cors-header)")

    def _check_token(self, scope, headers) -> bool | str:
        token = self.config.auth_token
        if not token:
            return True
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and _same(auth[7:].strip(), token):
            return "header"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if any(_same(v, token) for v in query.get("token", [])):
            return "query"
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:
            return False
        morsel = cookie.get(TOKEN_COOKIE)
        if morsel is not None and _same(morsel.value, token):
            return "cookie"
        return False

    async def _options(self, send, headers: dict):
        """Preflight (or a plain OPTIONS): empty 200, with the CORS headers when CORS is on."""
        await send({"type": "http.response.start", "status": 200, "headers": self._cors_headers(headers)})
        await send({"type": "http.response.body", "body": b""})

    def _cors_headers(self, headers: dict) -> list[tuple[bytes, bytes]]:
        origin = self.config.cors_origin
        if origin is None:
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1", "replace")),
                (b"access-control-allow-methods", CORS_METHODS.encode()),
                (b"access-control-allow-headers", CORS_HEADERS.encode()),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin")]

    async def _forward(self, scope, receive, send, limit: int, set_cookie: bool, cors: list):
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def decorated_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = list(cors)
                if set_cookie:
                    extra.append((b"set-cookie", f"{TOKEN_COOKIE}={self.config.auth_token}; HttpOnly; "
                                  "SameSite=Strict; Path=/".encode()))
                if extra:
                    message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, counted_receive, decorated_send)
        except BodyTooLarge:
            if not started:
                await _json(send, 413, _too_large_body(limit))


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8", "replace"))


def _same_origin(origin: str, allowed: str) -> bool:
    return origin.strip().rstrip("/").lower() == allowed.strip().rstrip("/").lower()


def _origin_mismatch(headers: dict, any_host: bool = False) -> bool:
    """Spec §1.1: Host and Origin both present, Host loopback, and they differ → refuse.
    `any_host`: compare whatever the Host is (is the request from the server's own page?)."""
    host, origin = headers.get("host"), headers.get("origin")
    if not host or not origin:
        return bool(origin) and any_host
    try:
        host_name = urlsplit("//" + host).hostname or ""
        parsed = urlsplit(origin)
        parsed.port
    except ValueError:                     # a malformed Host or Origin (bad port, brackets)
        return True
    if not any_host and not host_is_loopback(host_name):
        return False
    origin_netloc = parsed.netloc
    host_has_port, origin_has_port = ":" in host.rsplit("]", 1)[-1], parsed.port is not None
    if host_has_port and not origin_has_port:
        host = host.rsplit(":", 1)[0]
    elif origin_has_port and not host_has_port:
        origin_netloc = origin_netloc.rsplit(":", 1)[0]
    return host.lower() != origin_netloc.lower()


def _too_large_body(limit: int) -> dict:
    return {"error": {"type": "request_too_large", "message": f"request body is larger than {limit} bytes",
                      "details": "raise the limit with --max-upload-size MB", "extra_info": {}}}


async def _too_large(scope, receive, send, limit: int):
    await _json(send, 413, _too_large_body(limit))


async def _reject(scope, send, status: int, message: str, extra_headers: list | None = None):
    log.warning("refused %s %s: %s", scope.get("method", "WS"), scope.get("path"), message)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4401 if status == 401 else 4403, "reason": message[:120]})
        return
    kind = {401: "unauthorized", 403: "forbidden", 415: "unsupported_media_type"}.get(status, "bad_request")
    body = {"error": {"type": kind, "message": message, "details": "", "extra_info": {}}}
    await _json(send, status, body, extra_headers)


def _content_type_refusal(scope, headers: dict) -> str | None:
    """Why a browser's state-changing request has the wrong Content-Type for its route, or None.

    Only browser requests (they carry Origin or Sec-Fetch-Site) are held to it: a cross-site page
    can send text/plain or form bodies without a CORS preflight, but not application/json.
    Scripts are not browsers: ComfyUI's own script_examples post prompts with urllib's default
    type (application/x-www-form-urlencoded) and keep working."""
    if scope["method"] not in STATE_CHANGING or ("origin" not in headers and "sec-fetch-site" not in headers):
        return None
    path = scope.get("path", "")
    route = path[4:] if path.startswith("/api/") else path
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    is_json = kind == "application/json" or kind.endswith("+json")
    if route in JSON_ROUTES and not is_json:
        wanted = "application/json"
    elif route.startswith(TEXT_OR_JSON_ROUTES) and not (is_json or kind in ("text/plain", "")):
        wanted = "application/json (or text/plain)"
    else:
        return None
    return (f"{scope['method']} {path} from a browser needs 'Content-Type: {wanted}', got {kind or 'none'!r}; "
            "send the body as JSON with that header")


async def _json(send, status: int, body: dict, extra_headers: list | None = None):
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": payload})

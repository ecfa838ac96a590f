"""Request guards, as one pure ASGI middleware so they cover HTTP and the websocket alike:
access token, loopback origin check or CORS headers (spec §1.1), and the body size limit.
Also the path helpers that keep file routes inside their folders.
"""

from __future__ import annotations

import hmac
import json
import logging
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from diffmesh.server.config import ServerConfig, host_is_loopback

log = logging.getLogger("diffmesh.server.security")

TOKEN_COOKIE = "diffmesh_token"
CORS_METHODS = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
CORS_HEADERS = "Content-Type, Authorization"


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
        token_state = self._check_token(scope, headers)
        if token_state is False:
            return await _reject(scope, receive, send, 401, "missing or wrong access token: send header "
                                 "'Authorization: Bearer <token>' or add ?token=<token> to the URL "
                                 "(the token is printed by `diffmesh serve` at start)")
        if self.config.cors_origin is None and _origin_mismatch(headers):
            return await _reject(scope, receive, send, 403, "cross-origin request refused: the Origin header "
                                 "does not match the Host (start the server with --enable-cors-header to allow it)")
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS":
            return await self._options(send)
        limit = self.config.max_upload_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _too_large(scope, receive, send, limit)
        set_cookie = token_state == "query" and scope["type"] == "http"
        return await self._forward(scope, receive, send, limit, set_cookie)

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

    async def _options(self, send):
        await send({"type": "http.response.start", "status": 200, "headers": self._cors_headers()})
        await send({"type": "http.response.body", "body": b""})

    def _cors_headers(self) -> list[tuple[bytes, bytes]]:
        origin = self.config.cors_origin
        if origin is None:
            return []
        return [(b"access-control-allow-origin", origin.encode()),
                (b"access-control-allow-methods", CORS_METHODS.encode()),
                (b"access-control-allow-headers", CORS_HEADERS.encode()),
                (b"access-control-allow-credentials", b"true")]

    async def _forward(self, scope, receive, send, limit: int, set_cookie: bool):
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
                extra = self._cors_headers()
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


def _origin_mismatch(headers: dict) -> bool:
    """Spec §1.1: Host and Origin both present, Host loopback, and they differ → refuse."""
    host, origin = headers.get("host"), headers.get("origin")
    if not host or not origin:
        return False
    host_name = urlsplit("//" + host).hostname or ""
    if not host_is_loopback(host_name):
        return False
    parsed = urlsplit(origin)
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


async def _reject(scope, receive, send, status: int, message: str):
    log.warning("refused %s %s: %s", scope.get("method", "WS"), scope.get("path"), message)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4401 if status == 401 else 4403, "reason": message[:120]})
        return
    body = {"error": {"type": "unauthorized" if status == 401 else "forbidden", "message": message,
                      "details": "", "extra_info": {}}}
    await _json(send, status, body)


async def _json(send, status: int, body: dict):
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})

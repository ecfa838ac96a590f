"""Helpers shared by the route modules: the server state, strict JSON bodies, query parsing."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from diffmesh.server import bodies


def state(request: Request):
    """The `ServerState` of the app serving this request."""
    return request.app.state.diffmesh


def fail(status: int, kind: str, message: str, details: str = "", **extra: Any) -> HTTPException:
    return HTTPException(status_code=status,
                         detail={"error": {"type": kind, "message": message, "details": details, "extra_info": extra}})


async def read_json(request: Request, *, allow_empty: bool = False, default: Any = None) -> Any:
    """The body as JSON, or a 400 that says what is wrong with it (invalid, a non-finite number,
    nested too deeply: `bodies.loads`)."""
    raw = await request.body()
    if not raw.strip():
        if allow_empty:
            return default
        raise fail(400, "invalid_json", "request body is empty", f"{request.url.path} expects a JSON body")
    try:
        return bodies.loads(raw)
    except bodies.BodyError as exc:
        raise fail(400, "invalid_json", str(exc), f"{request.url.path}: {exc.path or 'body'}") from None


def query_int(request: Request, name: str, default: int | None = None) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise fail(400, "bad_request", f"query parameter {name!r} must be an integer", f"got {value[:40]!r}") from None
    if abs(number) >= 2**63:                       # SQLite integers are 64-bit
        raise fail(400, "bad_request", f"query parameter {name!r} is out of range", f"got {value[:40]!r}")
    return number


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    return value.lower() in ("true", "1", "yes")

"""`PackServer`: what custom node packs give the HTTP server and take from it.

A pack registers its own endpoints on `server.PromptServer.instance.routes` (an aiohttp-style
route table), ships a `WEB_DIRECTORY` of frontend extensions, and sends websocket messages with
`PromptServer.instance.send_sync(event, data, sid)`. The loader fills `routes` and `web_dirs`; the
server (`diffmesh.server.routes.extensions`) serves them and `attach`es its websocket hub. Without a
server (`diffmesh run`), messages go nowhere, as in ComfyUI without clients.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("diffmesh.compat")


@dataclass(frozen=True)
class RouteDef:
    """One pack endpoint: method ("GET", ... or "*"), aiohttp path pattern, handler, pack name."""

    method: str
    path: str
    handler: Callable[..., Any]
    pack: str = ""

    def pattern(self) -> re.Pattern:
        return compile_path(self.path)


def compile_path(path: str) -> re.Pattern:
    """aiohttp's `/a/{name}` and `/a/{name:regex}` as a full-match regular expression."""
    out, pos = [], 0
    for found in re.finditer(r"\{(\w+)(?::((?:[^{}]|\{[^{}]*\})+))?\}", path):
        out.append(re.escape(path[pos:found.start()]))
        out.append(f"(?P<{found.group(1)}>{found.group(2) or '[^{}/]+'})")
        pos = found.end()
    out.append(re.escape(path[pos:]))
    return re.compile("".join(out))


@dataclass
class PackServer:
    routes: list[RouteDef] = field(default_factory=list)
    web_dirs: dict[str, Path] = field(default_factory=dict)     # pack name -> its WEB_DIRECTORY
    static_dirs: dict[str, Path] = field(default_factory=dict)  # URL prefix -> folder (routes.static)
    hub: Any = None                                              # diffmesh.server.ws.ConnectionHub
    layer: Any = None                                            # the CompatLayer the packs loaded with

    def attach(self, hub: Any) -> None:
        self.hub = hub

    def imports(self):
        """ComfyUI's modules importable while a pack's route runs (its handler may import lazily)."""
        return self.layer.active() if self.layer is not None else contextlib.nullcontext()

    def add_route(self, route: RouteDef) -> None:
        self.routes.append(route)

    def static_file(self, path: str) -> tuple[Path, str] | None:
        """(folder, relative path) of a URL under a pack's `/extensions/<pack>/` or `routes.static` prefix."""
        parts = path.split("/", 3)                                # "", "extensions", pack, rest
        if len(parts) == 4 and parts[1] == "extensions" and parts[2] in self.web_dirs:
            return self.web_dirs[parts[2]], parts[3]
        for prefix, folder in list(self.static_dirs.items()):
            if path.startswith(prefix.rstrip("/") + "/"):
                return folder, path[len(prefix.rstrip("/")) + 1:]
        return None

    def match(self, method: str, path: str) -> tuple[RouteDef, dict[str, str]] | None:
        """The first pack route for `method path`; ComfyUI also serves each one under /api."""
        candidates = [path] + ([path[4:]] if path.startswith("/api/") else [])
        for route in self.routes:
            if route.method not in (method, "*") and not (method == "HEAD" and route.method == "GET"):
                continue
            for candidate in candidates:
                found = route.pattern().fullmatch(candidate)
                if found:
                    return route, found.groupdict()
        return None

    def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        """ComfyUI's send_sync: JSON `{"type": event, "data": data}`, or with an integer event and
        bytes a binary frame (4-byte big-endian event, then the bytes); to `sid`, or everyone."""
        hub = self.hub
        if hub is None:
            log.debug("send_sync(%r) without a server: dropped", event)
            return
        if isinstance(data, (bytes, bytearray)):
            if not isinstance(event, int):
                raise TypeError(f"send_sync: binary data needs an integer event type, got {event!r}")
            hub.send_bytes(struct.pack(">I", event) + bytes(data), sid)
        elif sid is None:
            hub.broadcast(str(event), data)
        else:
            hub.send(str(event), data, sid)

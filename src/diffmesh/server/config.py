"""Server settings: one typed object built from the `diffmesh serve` flags, validated once."""

from __future__ import annotations

import argparse
import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from diffmesh.errors import ConfigError

PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass
class ServerConfig:
    """Everything the HTTP/websocket layer needs; no processes are started here."""

    listen: str = "127.0.0.1"  # bind address; anything not loopback requires a token
    port: int = 8188
    auth_token: str | None = None  # required on every route and the websocket when set
    token_generated: bool = False  # True when we made the token up (printed at start)
    max_upload_bytes: int = 100 * 1024 * 1024  # request body limit (--max-upload-size MB)
    cors_origin: str | None = None  # --enable-cors-header value; None = loopback origin check
    preview_method: str = "none"  # default when a prompt's extra_data does not ask
    preview_size: int = 512  # longest preview side in pixels
    disable_metadata: bool = False
    user_directory: Path | None = None  # where the SQLite store and settings live
    state_db: Path | None = None  # SQLite file; default <user_directory>/diffmesh.sqlite3
    max_history: int = 10000  # history entries kept (--max-history; ComfyUI keeps 10,000)
    argv: list[str] = field(default_factory=list)

    @property
    def listen_is_local(self) -> bool:
        """Only 127.0.0.1, ::1 and localhost run without a token. Any other address, even elsewhere
        in 127.0.0.0/8, is treated as reachable by others (tests use 127.0.0.2 for that case)."""
        return all(host.strip().strip("[]") in LOCAL_ADDRESSES for host in self.listen.split(","))

    @property
    def bind_hosts(self) -> list[str]:
        return [h.strip() for h in self.listen.split(",") if h.strip()]

    @classmethod
    def from_args(cls, ns: argparse.Namespace, user_directory: Path | None = None) -> "ServerConfig":
        listen = getattr(ns, "listen", None) or "127.0.0.1"
        preview = getattr(ns, "preview_method", None) or "none"
        if preview not in PREVIEW_METHODS:
            raise ConfigError(f"unknown preview method {preview!r}", where="--preview-method",
                              fix=f"use one of {', '.join(PREVIEW_METHODS)}")
        size_mb = getattr(ns, "max_upload_size", 100)
        if size_mb is None or size_mb <= 0:
            raise ConfigError(f"max upload size must be positive, got {size_mb}", where="--max-upload-size",
                              fix="pass a size in MB, e.g. --max-upload-size 100")
        port = int(getattr(ns, "port", 8188))
        if not 0 <= port <= 65535:
            raise ConfigError(f"port {port} is out of range", where="--port", fix="use 0..65535 (0 = any free port)")
        max_history = int(getattr(ns, "max_history", 10000) or 0)
        if max_history < 1:
            raise ConfigError(f"--max-history must be at least 1, got {max_history}", where="--max-history",
                              fix="pass the number of history entries to keep, e.g. --max-history 10000")
        cfg = cls(listen=listen, port=port, max_history=max_history, auth_token=getattr(ns, "auth_token", None) or None,
                  max_upload_bytes=int(size_mb * 1024 * 1024),
                  cors_origin=getattr(ns, "enable_cors_header", None),
                  preview_method=preview, preview_size=int(getattr(ns, "preview_size", 512) or 512),
                  disable_metadata=bool(getattr(ns, "disable_metadata", False)),
                  user_directory=user_directory, argv=list(getattr(ns, "argv", []) or []))
        if cfg.auth_token is None and not cfg.listen_is_local:
            cfg.auth_token = secrets.token_urlsafe(24)
            cfg.token_generated = True
        return cfg


def host_is_loopback(host: str) -> bool:
    """True if a hostname is `localhost` or a loopback address literal (127.0.0.0/8, ::1).

    Never resolves names: a DNS lookup would block the event loop, and a name that resolves to
    127.0.0.1 is exactly what a DNS-rebinding attacker controls."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_header_is_loopback(value: str | None) -> bool:
    """The Host header names a loopback host (any port). A request without one (HTTP/1.0, not
    something a browser sends) passes; an empty or malformed one does not."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        return bool(bracket) and (rest == "" or (rest.startswith(":") and rest[1:].isdigit())) and \
            host_is_loopback(name)
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return False
    return host_is_loopback(name)

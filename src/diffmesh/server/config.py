"""Server settings: one typed object built from the `diffmesh serve` flags, validated once."""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import socket
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
        cfg = cls(listen=listen, port=port, auth_token=getattr(ns, "auth_token", None) or None,
                  max_upload_bytes=int(size_mb * 1024 * 1024),
                  cors_origin=getattr(ns, "enable_cors_header", None),
                  preview_method=preview, preview_size=int(getattr(ns, "preview_size", 512) or 512),
                  disable_metadata=bool(getattr(ns, "disable_metadata", False)),
                  user_directory=user_directory, argv=list(getattr(ns, "argv", []) or []))
        if cfg.auth_token is None and not cfg.listen_is_local:
            cfg.auth_token = secrets.token_urlsafe(24)
            cfg.token_generated = True
        return cfg


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def host_is_loopback(host: str) -> bool:
    """True if a Host header's hostname names a loopback address (used by the origin check)."""
    return _is_loopback(host)

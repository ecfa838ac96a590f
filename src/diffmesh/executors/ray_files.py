"""Model files on every Ray node: read from the node's own folder when it has the same file, else
sent once through Ray's object store and cached on that node.

A model file is known by its fingerprint: base name, size and SHA-256. The server side
(`file_fingerprints`) fingerprints every file a call's model handles name; the actor side
(`NodeFiles`) resolves each one to a path on its own node, in this order:
  1. the node's models folder (`DIFFMESH_NODE_MODELS`, set in the environment of `ray start` on that
     node): a file of the same name anywhere below it, with the same size and hash;
  2. when no node folder is set, the server's own path, if it exists here with the same size and hash
     (one machine, or a filesystem shared by all nodes);
  3. the node's cache (`DIFFMESH_NODE_CACHE`, default `~/.cache/diffmesh/ray-files`), where files sent
     earlier are kept as `<sha256>/<name>`.
A file found nowhere is reported missing; the executor then sends its bytes in chunks
(`CHUNK_BYTES`) through the object store and the actor writes them to its cache, checking the hash.
Handles reaching the worker carry the node-local paths (`localize`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from diffmesh.models.handle import LoraPatch, ModelHandle

CHUNK_BYTES = 64 * 1024 * 1024
NODE_MODELS_ENV = "DIFFMESH_NODE_MODELS"
NODE_CACHE_ENV = "DIFFMESH_NODE_CACHE"


@dataclass(frozen=True)
class Fingerprint:
    name: str
    size: int
    sha256: str


class HashCache:
    """SHA-256 of files, computed once per (path, size, mtime): multi-GB checkpoints take seconds."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def fingerprint(self, path: str) -> Fingerprint:
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._known[key] = digest.hexdigest()
        return Fingerprint(os.path.basename(path), stat.st_size, self._known[key])


def handle_paths(handle: ModelHandle) -> list[str]:
    return [handle.path, *handle.extra_paths, *(lora.path for lora in handle.loras)]


def iter_handles(value: Any, depth: int = 2) -> Iterator[ModelHandle]:
    """Model handles among a call's arguments (top level and inside lists, tuples and dicts)."""
    if isinstance(value, ModelHandle):
        yield value
    elif depth > 0 and isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_handles(item, depth - 1)
    elif depth > 0 and isinstance(value, dict):
        for item in value.values():
            yield from iter_handles(item, depth - 1)


def file_fingerprints(hashes: HashCache, args: tuple, kwargs: dict) -> dict[str, Fingerprint]:
    """Server side: path -> fingerprint for every existing file the call's handles name."""
    paths = {p for part in (args, kwargs) for h in iter_handles(part) for p in handle_paths(h)}
    return {p: hashes.fingerprint(p) for p in sorted(paths) if os.path.isfile(p)}


class NodeFiles:
    """Actor side: server paths -> paths on this node (see the module docstring for the order)."""

    def __init__(self, models_dir: str | None = None, cache_dir: str | None = None):
        models_dir = models_dir if models_dir is not None else os.environ.get(NODE_MODELS_ENV)
        self.models_dir = Path(models_dir) if models_dir else None
        self.cache_dir = Path(cache_dir or os.environ.get(NODE_CACHE_ENV)
                              or Path.home() / ".cache" / "diffmesh" / "ray-files")
        self.hashes = HashCache()
        self._local: dict[str, str] = {}       # server path -> node path, for fingerprints already checked
        self.received: list[str] = []          # names this actor was sent (for /system_stats and tests)

    def _matches(self, path: Path, fp: Fingerprint) -> bool:
        return path.is_file() and path.stat().st_size == fp.size and self.hashes.fingerprint(str(path)).sha256 == fp.sha256

    def _find(self, server_path: str, fp: Fingerprint) -> str | None:
        if self.models_dir is not None:
            for candidate in self.models_dir.rglob(fp.name):
                if self._matches(candidate, fp):
                    return str(candidate)
        elif self._matches(Path(server_path), fp):
            return server_path
        cached = self.cache_dir / fp.sha256 / fp.name
        return str(cached) if self._matches(cached, fp) else None

    def missing(self, wanted: dict[str, Fingerprint]) -> list[str]:
        """The server paths of `wanted` this node does not have (and remembers where the others are)."""
        out = []
        for server_path, fp in wanted.items():
            known = self._local.get(server_path)
            if known is not None and self._matches(Path(known), fp):
                continue
            found = self._find(server_path, fp)
            if found is None:
                out.append(server_path)
            else:
                self._local[server_path] = found
        return out

    def receive(self, server_path: str, fp: Fingerprint, chunks: list[bytes]) -> str:
        """Write a sent file into the cache (atomically, hash checked) and map the server path to it."""
        target = self.cache_dir / fp.sha256 / fp.name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{fp.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        with open(partial, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != fp.sha256:
            partial.unlink(missing_ok=True)
            raise OSError(f"model file {fp.name} arrived with a different SHA-256; not cached")
        os.replace(partial, target)
        self._local[server_path] = str(target)
        self.received.append(fp.name)
        return str(target)

    def localize(self, value: Any, depth: int = 2) -> Any:
        """`value` with every model handle's paths replaced by this node's paths."""
        if isinstance(value, ModelHandle):
            local = self._local.get
            return replace(value, path=local(value.path, value.path),
                           extra_paths=tuple(local(p, p) for p in value.extra_paths),
                           loras=tuple(LoraPatch(local(l.path, l.path), l.strength) for l in value.loras))
        if depth > 0 and isinstance(value, list):
            return [self.localize(v, depth - 1) for v in value]
        if depth > 0 and isinstance(value, tuple):
            return tuple(self.localize(v, depth - 1) for v in value)
        if depth > 0 and isinstance(value, dict):
            return {k: self.localize(v, depth - 1) for k, v in value.items()}
        return value


def read_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            yield chunk

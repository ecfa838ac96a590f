"""Users, settings and per-user files (spec §1.2 "Users / settings / userdata"). Single-user:
everything lives in `<user dir>/default`; every path is resolved with `safe_join`."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from types import MappingProxyType
from pathlib import Path
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from diffmesh.config.paths import safe_join
from diffmesh.server.routes.common import fail, query_bool, read_json, state
from diffmesh.server.routes.files import os_error

SETTINGS_FILE = "comfy.settings.json"
# What a user who never changed a setting gets. diffmesh ships no workflow templates, so the
# frontend's first-run screen (a blank canvas under an empty template browser) would greet new
# users with nothing; with the tutorial marked done it loads its default text-to-image workflow.
DEFAULT_SETTINGS = MappingProxyType({"Comfy.TutorialCompleted": True})


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/users", get_users, methods=["GET"])
    r.add_api_route("/users", post_users, methods=["POST"])
    r.add_api_route("/settings", get_settings, methods=["GET"])
    r.add_api_route("/settings", post_settings, methods=["POST"])
    r.add_api_route("/settings/{setting_id}", get_setting, methods=["GET"])
    r.add_api_route("/settings/{setting_id}", post_setting, methods=["POST"])
    r.add_api_route("/userdata", list_userdata, methods=["GET"])
    r.add_api_route("/v2/userdata", list_userdata_v2, methods=["GET"])
    r.add_api_route("/userdata/{file:path}/move/{dest:path}", move_userdata, methods=["POST"])
    r.add_api_route("/userdata/{file:path}", get_userdata, methods=["GET"])
    r.add_api_route("/userdata/{file:path}", post_userdata, methods=["POST"])
    r.add_api_route("/userdata/{file:path}", delete_userdata, methods=["DELETE"])
    return r


# -- users and settings ------------------------------------------------------------------------


async def get_users(request: Request):
    return {"storage": "server", "migrated": state(request).user_root.is_dir()}


async def post_users(request: Request):
    raise fail(400, "bad_request", "this server runs in single-user mode", "all data is stored for user 'default'")


class _SettingsFile:
    """Read-modify-write of the settings JSON under one lock per app."""

    def __init__(self, path: Path, lock: threading.Lock):
        self.path, self.lock = path, lock

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, values: dict) -> None:
        with self.lock:
            data = self.read()
            data.update(values)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=4))
            os.replace(tmp, self.path)


def _settings(request: Request) -> _SettingsFile:
    s = state(request)
    return _SettingsFile(s.user_root / SETTINGS_FILE, s.settings_lock)


async def _effective_settings(request: Request) -> dict:
    return {**DEFAULT_SETTINGS, **await asyncio.to_thread(_settings(request).read)}


async def get_settings(request: Request):
    return await _effective_settings(request)


async def get_setting(request: Request, setting_id: str):
    return JSONResponse((await _effective_settings(request)).get(setting_id))


async def post_settings(request: Request):
    body = await read_json(request)
    if not isinstance(body, dict):
        raise fail(400, "bad_request", "POST /settings expects a JSON object of settings")
    await _update_settings(request, body)
    return Response(status_code=200)


async def _update_settings(request: Request, values: dict) -> None:
    try:
        await asyncio.to_thread(_settings(request).update, values)
    except OSError as exc:
        raise os_error(exc, f"cannot write {SETTINGS_FILE}") from None


async def post_setting(request: Request, setting_id: str):
    if not setting_id:
        raise fail(400, "bad_request", "setting id is empty")
    value = await read_json(request)
    await _update_settings(request, {setting_id: value})
    return Response(status_code=200)


# -- userdata ------------------------------------------------------------------------------------


def _user_path(request: Request, rel: str) -> Path:
    rel = unquote(rel) if "%" in rel else rel
    if not rel:
        raise fail(400, "bad_request", "file path is empty")
    return safe_join(state(request).user_root, rel)


def _file_info(path: Path, root: Path) -> dict:
    st = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": st.st_size, "modified": st.st_mtime,
            "created": st.st_ctime}


def _list(folder: Path, recurse: bool) -> list[Path]:
    if recurse:
        return sorted(p for p in folder.rglob("*") if p.is_file())
    return sorted(p for p in folder.iterdir() if p.is_file())


async def list_userdata(request: Request):
    directory = request.query_params.get("dir")
    if not directory:
        raise fail(400, "bad_request", "query parameter 'dir' is required", "e.g. ?dir=workflows")
    folder = _user_path(request, directory)
    if not folder.is_dir():
        raise fail(404, "not_found", f"user folder {directory!r} does not exist")
    recurse, full, split = (query_bool(request, k) for k in ("recurse", "full_info", "split"))
    try:
        files = await asyncio.to_thread(_list, folder, recurse)
    except OSError as exc:
        raise os_error(exc, f"cannot list user folder {directory!r}") from None
    if full:
        return [_file_info(p, folder) for p in files]
    rels = [p.relative_to(folder).as_posix() for p in files]
    return [[r, *r.split("/")] for r in rels] if split else rels


async def list_userdata_v2(request: Request):
    rel = request.query_params.get("path") or ""
    root = state(request).user_root
    folder = safe_join(root, rel) if rel else root
    if not folder.is_dir():
        raise fail(404, "not_found", f"user folder {rel!r} does not exist")
    try:
        return await asyncio.to_thread(_entries, folder, root)
    except OSError as exc:
        raise os_error(exc, f"cannot list user folder {rel!r}") from None


def _entries(folder: Path, root: Path) -> list[dict]:
    entries = []
    for p in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name)):
        item = {"name": p.name, "path": p.relative_to(root).as_posix(), "type": "directory" if p.is_dir() else "file"}
        if p.is_file():
            st = p.stat()
            item.update(size=st.st_size, modified=st.st_mtime)
        entries.append(item)
    return entries


async def get_userdata(request: Request, file: str):
    path = _user_path(request, file)
    if not path.is_file():
        raise fail(404, "not_found", f"user file {file!r} does not exist")
    return FileResponse(path)


def _answer(request: Request, path: Path):
    if query_bool(request, "full_info"):
        return _file_info(path, state(request).user_root)
    return path.relative_to(state(request).user_root).as_posix()


async def post_userdata(request: Request, file: str):
    path = _user_path(request, file)
    overwrite = query_bool(request, "overwrite", True)
    if path.exists() and not overwrite:
        raise fail(409, "conflict", f"user file {file!r} already exists", "pass ?overwrite=true to replace it")
    if path.is_dir():
        raise fail(409, "conflict", f"{file!r} is a folder")
    body = await request.body()
    try:
        await asyncio.to_thread(_write, path, body)
    except OSError as exc:
        raise os_error(exc, f"cannot write user file {file!r}") from None
    return _answer(request, path)


def _write(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


async def delete_userdata(request: Request, file: str):
    path = _user_path(request, file)
    if not path.is_file():
        raise fail(404, "not_found", f"user file {file!r} does not exist")
    try:
        path.unlink()
    except OSError as exc:
        raise os_error(exc, f"cannot delete user file {file!r}") from None
    return Response(status_code=204)


async def move_userdata(request: Request, file: str, dest: str):
    source, target = _user_path(request, file), _user_path(request, dest)
    if not source.is_file():
        raise fail(404, "not_found", f"user file {file!r} does not exist")
    if target.exists() and not query_bool(request, "overwrite", True):
        raise fail(409, "conflict", f"user file {dest!r} already exists", "pass ?overwrite=true to replace it")
    if target.is_dir():
        raise fail(409, "conflict", f"{dest!r} is a folder", "move the file to a name inside it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    except OSError as exc:
        raise os_error(exc, f"cannot move user file {file!r} to {dest!r}") from None
    return _answer(request, target)

"""FE-only internal routes, mounted at /internal only (spec §1.2 "Internal")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request, Response

from diffmesh.server.routes.common import read_json, state
from diffmesh.server.routes.files import type_dir


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/logs", get_logs, methods=["GET"])
    r.add_api_route("/logs/raw", get_logs_raw, methods=["GET"])
    r.add_api_route("/logs/subscribe", patch_logs_subscribe, methods=["PATCH"])
    r.add_api_route("/folder_paths", get_folder_paths, methods=["GET"])
    r.add_api_route("/files/{kind}", get_files, methods=["GET"])
    return r


async def get_logs(request: Request):
    return ""


async def get_logs_raw(request: Request):
    return {"entries": [], "size": {"cols": 80, "rows": 24}}


async def patch_logs_subscribe(request: Request):
    await read_json(request, allow_empty=True, default={})
    return Response(status_code=200)


async def get_folder_paths(request: Request):
    return {key: [str(f) for f in folders] for key, folders in state(request).paths.models.items()}


def _visible_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


async def get_files(request: Request, kind: str):
    folder = type_dir(state(request).paths, kind)
    return await asyncio.to_thread(_visible_files, folder)

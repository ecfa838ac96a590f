"""`/global_subgraphs`: the subgraph blueprints the frontend offers in its node library, as ComfyUI
(app/subgraph_manager.py) lists them.

Two sources, as in ComfyUI: every custom-node pack's `subgraphs/*.json` (source "custom_node", pack
"custom_nodes.<folder>") and the blueprint folder (source "templates", pack "comfyui"). ComfyUI's
blueprint folder is `blueprints/` in its own install; diffmesh ships no blueprints (ComfyUI's are
workflows of its own nodes), so its blueprint folder is `<base>/blueprints/`, where ComfyUI's
files, or one's own, can be put. The workflow-templates and frontend packages ship none.

An entry's id is the sha256 of source + absolute path (forward slashes), as ComfyUI hashes it, so
ids stay the same across restarts. The list leaves out each file's `data`; `/global_subgraphs/{id}`
has it (the file's text), and answers `null` for an unknown id, as ComfyUI does. The folders are
read on each request, so a file added while the server runs shows up at once.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from diffmesh.server.routes.common import state

CUSTOM_NODE, TEMPLATES = "custom_node", "templates"


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/global_subgraphs", list_subgraphs, methods=["GET"])
    r.add_api_route("/global_subgraphs/{entry_id}", get_subgraph, methods=["GET"])
    return r


def _entry(file: Path, source: str, node_pack: str) -> tuple[str, dict]:
    path = file.resolve().as_posix()
    entry_id = hashlib.sha256(f"{source}{path}".encode()).hexdigest()
    return entry_id, {"source": source, "name": file.stem, "path": path, "info": {"node_pack": node_pack}}


def find_subgraphs(paths) -> dict[str, dict]:
    """id -> entry (with its `path`) for every blueprint file: custom-node packs first, then the
    blueprint folder (a later entry with the same id replaces an earlier one, as in ComfyUI)."""
    entries: dict[str, dict] = {}
    for folder in paths.models.get("custom_nodes") or []:
        for file in sorted(Path(folder).glob("*/subgraphs/*.json")):
            entry_id, entry = _entry(file, CUSTOM_NODE, f"custom_nodes.{file.parent.parent.name}")
            entries[entry_id] = entry
    blueprints = Path(paths.base) / "blueprints"
    for file in sorted(blueprints.glob("*.json")) if blueprints.is_dir() else ():
        entry_id, entry = _entry(file, TEMPLATES, "comfyui")
        entries[entry_id] = entry
    return entries


def _public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "path"}


async def list_subgraphs(request: Request):
    entries = await asyncio.to_thread(find_subgraphs, state(request).paths)
    return {entry_id: {k: v for k, v in _public(e).items() if k != "data"} for entry_id, e in entries.items()}


async def get_subgraph(entry_id: str, request: Request):
    entries = await asyncio.to_thread(find_subgraphs, state(request).paths)
    entry = entries.get(entry_id)
    if entry is None:
        return JSONResponse(None)                    # ComfyUI answers null, status 200
    entry["data"] = await asyncio.to_thread(Path(entry["path"]).read_text, encoding="utf-8")
    return _public(entry)

"""Node definitions and model listings: /object_info, /embeddings, /extensions, /models (spec §1.2)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter, Request

from diffmesh.server.routes.common import fail, state


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/object_info", get_object_info, methods=["GET"])
    r.add_api_route("/object_info/{node_class}", get_object_info_one, methods=["GET"])
    r.add_api_route("/embeddings", get_embeddings, methods=["GET"])
    r.add_api_route("/extensions", get_extensions, methods=["GET"])
    r.add_api_route("/models", get_models, methods=["GET"])
    r.add_api_route("/models/{folder}", get_models_in, methods=["GET"])
    r.add_api_route("/experiment/models", get_experiment_models, methods=["GET"])
    r.add_api_route("/experiment/models/{folder}", get_experiment_models_in, methods=["GET"])
    return r


def object_info(runtime, paths) -> dict:
    """The registry's `/object_info` dict, whatever the name of its generator method."""
    registry = runtime.registry
    for name in ("to_object_info", "object_info"):
        method = getattr(registry, name, None)
        if method is None:
            continue
        try:
            return method(paths)
        except TypeError:
            return method()
    raise RuntimeError("the node registry has no to_object_info(paths) method")


async def get_object_info(request: Request):
    s = state(request)
    runtime = await asyncio.to_thread(s.runtime.get)
    return await asyncio.to_thread(object_info, runtime, s.paths)


async def get_object_info_one(request: Request, node_class: str):
    s = state(request)
    runtime = await asyncio.to_thread(s.runtime.get)
    info = await asyncio.to_thread(object_info, runtime, s.paths)
    return {node_class: info[node_class]} if node_class in info else {}


async def get_embeddings(request: Request):
    paths = state(request).paths
    names = await asyncio.to_thread(paths.list, "embeddings")
    return [os.path.splitext(n)[0] for n in names]


async def get_extensions(request: Request):
    """The custom node packs' web extension scripts (the frontend's core extensions are built in)."""
    from diffmesh.server.routes.extensions import extension_files

    return await asyncio.to_thread(extension_files, request)


async def get_models(request: Request):
    return [k for k in state(request).paths.folder_keys()]


def _known_folder(paths, folder: str) -> None:
    if folder not in paths.models:
        raise fail(404, "unknown_folder", f"no model folder named {folder!r}",
                   f"known folders: {', '.join(paths.folder_keys())}")


async def get_models_in(request: Request, folder: str):
    paths = state(request).paths
    _known_folder(paths, folder)
    return await asyncio.to_thread(paths.list, folder)


async def get_experiment_models(request: Request):
    paths = state(request).paths
    return [{"name": key, "folders": [str(f) for f in folders]} for key, folders in paths.models.items()
            if key not in ("configs", "custom_nodes")]


def _model_infos(paths, folder: str) -> list[dict]:
    """Each file of `folder` once, with the index of the first root that holds it."""
    roots = [Path(root) for root in paths.models[folder]]
    found = []
    for name in paths.list(folder):
        index = next((i for i, root in enumerate(roots) if (root / name).is_file()), None)
        if index is None:
            continue
        st = (roots[index] / name).stat()
        found.append({"name": name, "pathIndex": index, "modified": st.st_mtime, "created": st.st_ctime,
                      "size": st.st_size})
    found.sort(key=lambda info: info["pathIndex"])   # stable: by root, then by name within a root
    return found


async def get_experiment_models_in(request: Request, folder: str):
    paths = state(request).paths
    _known_folder(paths, folder)
    return await asyncio.to_thread(_model_infos, paths, folder)

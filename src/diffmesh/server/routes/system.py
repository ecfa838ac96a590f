"""System routes: /system_stats, /features, /i18n and the custom-node template list
(spec §1.2)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import logging
import platform
import sys

from fastapi import APIRouter, Request

from diffmesh.server import packages
from diffmesh.server.routes.common import state

log = logging.getLogger("diffmesh.server")

COMFYUI_VERSION = "0.8.0"  # the ComfyUI release whose API we speak


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/system_stats", get_system_stats, methods=["GET"])
    r.add_api_route("/features", get_features, methods=["GET"])
    r.add_api_route("/i18n", get_i18n, methods=["GET"])
    r.add_api_route("/workflow_templates", get_empty_dict, methods=["GET"])
    return r


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _cpu_device() -> dict:
    import psutil

    mem = psutil.virtual_memory()
    return {"name": "cpu", "type": "cpu", "index": None, "vram_total": mem.total, "vram_free": mem.available,
            "torch_vram_total": mem.total, "torch_vram_free": mem.available}


def _devices(runtime_ready: bool) -> list[dict]:
    """Every device with its memory: accelerators from `diffmesh.devices.discovery`, then the CPU.
    Until the runtime is built (torch imported) only the CPU is listed, so this answers at once."""
    if not runtime_ready or "torch" not in sys.modules:
        return [_cpu_device()]
    try:
        discovery = importlib.import_module("diffmesh.devices.discovery")
        accelerators = discovery.list_accelerators()
    except Exception:
        log.exception("device discovery failed; reporting the CPU only")
        return [_cpu_device()]
    return [_accelerator_dict(a) for a in accelerators] + [_cpu_device()]


def _accelerator_dict(acc) -> dict:
    import torch

    total = int(acc.total_memory or 0)
    free, torch_total, torch_free = total, total, total
    if acc.kind == "cuda":
        try:
            free, total = torch.cuda.mem_get_info(acc.index)
            reserved = torch.cuda.memory_reserved(acc.index)
            torch_total, torch_free = reserved, reserved - torch.cuda.memory_allocated(acc.index)
        except Exception as exc:  # a device that stopped answering still gets listed
            log.warning("cannot read memory of %s: %s", acc.torch_device, exc)
    return {"name": f"{acc.torch_device} {acc.name}", "type": acc.kind, "index": acc.index,
            "vram_total": int(total), "vram_free": int(free), "torch_vram_total": int(torch_total),
            "torch_vram_free": int(torch_free)}


def _placement(s) -> dict:
    """Which device runs what: the engine's own description once the runtime is built."""
    runtime = s.runtime.peek()
    info: dict = {"version": _version("diffmesh"), "runtime_ready": runtime is not None,
                  "running_prompts": s.dispatcher.running(), "websocket": s.hub.describe()}
    engine = getattr(runtime, "engine", None) if runtime is not None else None
    if engine is not None and hasattr(engine, "describe"):
        try:
            info.update(engine.describe())
        except Exception as exc:
            info["describe_error"] = f"{type(exc).__name__}: {exc}"
    return info


async def get_system_stats(request: Request):
    import psutil

    s = state(request)
    mem = psutil.virtual_memory()
    system = {
        "os": sys.platform, "ram_total": mem.total, "ram_free": mem.available,
        "comfyui_version": COMFYUI_VERSION, **packages.system_fields(), "deploy_environment": "local",
        "python_version": sys.version, "pytorch_version": _version("torch"),
        "embedded_python": False, "argv": redact_argv(sys.argv), "machine": platform.machine(),
    }
    devices = await asyncio.to_thread(_devices, s.runtime.ready)
    return {"system": system, "devices": devices, "diffmesh": _placement(s)}


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with the access token's value replaced (`--auth-token T`, `--auth-token=T`):
    /system_stats shows argv (the frontend reads it), and the token must never leave the server."""
    out, hide_next = [], False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        is_token_flag = len(name) >= 6 and "--auth-token".startswith(name)   # argparse takes abbreviations
        if hide_next:
            out.append("<hidden>")
            hide_next = False
        elif is_token_flag and eq:
            out.append(f"{name}=<hidden>")
        else:
            out.append(arg)
            hide_next = is_token_flag
    return out


async def get_features(request: Request):
    return state(request).feature_flags()


async def get_i18n(request: Request):
    return {}


async def get_empty_dict(request: Request):
    return {}

"""Multi-device nodes: place a model component on a device, ask for a parallel strategy.

SelectModelDevice / SelectCLIPDevice / SelectVAEDevice set `handle.device`; the engine's
placement honours it (`diffmesh.engine.placement`). A device this machine lacks passes the
handle through unchanged with a warning, so a workflow made on a bigger machine still runs.
MultiGPU_WorkUnits (ComfyUI-MultiGPU's "CFG Split") marks a MODEL with a parallel-strategy
request that the engine's planner follows instead of `--parallel`.
"""

from __future__ import annotations

import logging

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, SchemaEnv, combo, inp, out
from diffmesh.parallel.request import with_parallel_request

log = logging.getLogger("diffmesh.nodes.devices")

CATEGORY = "multigpu"


def device_choices(env: SchemaEnv) -> list[str]:
    return ["default", *env.device_names]


def _known_devices(ctx: NodeContext) -> list[str] | None:
    names = getattr(ctx.engine, "device_names", None)
    root = getattr(ctx.engine, "root", None)
    if names is None and root is not None:
        names = getattr(root, "device_names", None)
    return list(names()) if callable(names) else None


def _select(ctx: NodeContext, handle, device: str, what: str):
    if device in (None, "", "default"):
        return (handle.with_options(device=None),)
    known = _known_devices(ctx)
    if known is not None and device not in known:
        log.warning("node %s: this machine has no device %r for the %s (it has: %s); the %s stays where "
                    "the engine places it", ctx.node_id, device, what, ", ".join(known) or "none", what)
        return (handle,)
    return (handle.with_options(device=device),)


def select_model_device(ctx: NodeContext, model, device: str = "default"):
    return _select(ctx, model, device, "model")


def select_clip_device(ctx: NodeContext, clip, device: str = "default"):
    return _select(ctx, clip, device, "CLIP")


def select_vae_device(ctx: NodeContext, vae, device: str = "default"):
    return _select(ctx, vae, device, "VAE")


def work_units(ctx: NodeContext, model, strategy: str = "cfg"):
    return (with_parallel_request(model, strategy),)


def accept_any_device(paths, device: str = "default"):
    """Devices differ between machines: an unknown one warns at run time instead of failing validation."""
    return True


def _select_node(name: str, display: str, type_: str, fn) -> NodeDef:
    return NodeDef(NodeSchema(
        name=name, display_name=display, category=CATEGORY,
        description=f"Runs the {type_} on the chosen device (diffmesh placement).",
        inputs=(inp(type_.lower(), type_), combo("device", device_choices, tooltip="The device that runs it.")),
        outputs=out(type_), python_module="diffmesh.nodes.devices"), fn, validate_inputs=accept_any_device)


NODES = (
    _select_node("SelectModelDevice", "Select Model Device", "MODEL", select_model_device),
    _select_node("SelectCLIPDevice", "Select CLIP Device", "CLIP", select_clip_device),
    _select_node("SelectVAEDevice", "Select VAE Device", "VAE", select_vae_device),
    NodeDef(NodeSchema(
        name="MultiGPU_WorkUnits", display_name="CFG Split (MultiGPU Work Units)", category=CATEGORY,
        description="Splits the sampling work of this model across devices: 'cfg' runs cond and uncond on two "
                    "devices each step; 'batch' splits the batch; 'auto' lets the planner choose.",
        inputs=(inp("model", "MODEL"), combo("strategy", ("cfg", "batch", "auto", "none"),
                                              tooltip="How the sampling work is split.")),
        outputs=out("MODEL"), python_module="diffmesh.nodes.devices"), work_units),
)


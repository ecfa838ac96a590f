"""Multi-device nodes, with current ComfyUI's names, inputs and device options.

SelectModelDevice / SelectCLIPDevice / SelectVAEDevice set `handle.device`; the engine's placement
honours it (`diffmesh.engine.placement`). Their options are ComfyUI's: `default` (the engine's own
placement), `cpu` (not for the VAE, as in ComfyUI) and `gpu:N` when there are several devices,
then diffmesh's worker names (`cuda:1`, `cpu:0`, ...). `gpu:N` means the Nth accelerator worker, or
on a machine of CPU workers the Nth worker (`parallel.request.gpu_worker`). A device this machine
lacks passes the handle through unchanged with a warning, so a workflow made on a bigger machine
still runs.

MultiGPU_WorkUnits ("MultiGPU CFG Split") marks a MODEL with a parallel request that the
engine's planner follows instead of `--parallel`: CFG split over at most `max_gpus` devices
(diffmesh's optional `strategy` may pick batch or auto instead). MultiGPU_Options nodes chain
(device index, relative speed) pairs into a GPU_OPTIONS value whose speeds the planner uses.
"""

from __future__ import annotations

import logging

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, SchemaEnv, combo, inp, out
from diffmesh.parallel.request import with_parallel_request

log = logging.getLogger("diffmesh.nodes.devices")

CATEGORY = "advanced/multigpu"
MODULE = "comfy_extras.nodes_multigpu"         # where ComfyUI defines these nodes


def _gpu_options(names: tuple[str, ...]) -> list[str]:
    accelerators = [n for n in names if not n.startswith("cpu")]
    count = len(accelerators) or len(names)    # CPU workers stand in for GPUs
    return [f"gpu:{i}" for i in range(count)] if count > 1 else []


def device_choices(env: SchemaEnv) -> list[str]:
    options = ["default", "cpu", *_gpu_options(env.device_names)]
    return options + [n for n in env.device_names if n not in options]


def vae_device_choices(env: SchemaEnv) -> list[str]:
    return [c for c in device_choices(env) if c != "cpu"]


def _known_devices(ctx: NodeContext) -> list[str] | None:
    names = getattr(ctx.engine, "device_names", None)
    root = getattr(ctx.engine, "root", None)
    if names is None and root is not None:
        names = getattr(root, "device_names", None)
    return list(names()) if callable(names) else None


def _device_request(option: str, known: list[str] | None) -> str | None:
    """The engine device request for a combo value (a worker label, or `cpu`), or None if there is
    no such device. `gpu:N` becomes the label of the Nth accelerator (or CPU stand-in) worker."""
    if not option.startswith("gpu:"):
        return option
    if known is None:
        return None
    accelerators = [n for n in known if not n.startswith("cpu")]
    pool = accelerators or known
    index = option.split(":", 1)[1]
    return pool[int(index)] if index.isdigit() and int(index) < len(pool) else None


def _select(ctx: NodeContext, handle, device: str, what: str, allow_cpu: bool = True):
    if device in (None, "", "default"):
        return (handle.with_options(device=None),)
    if device == "cpu" and not allow_cpu:
        log.info("node %s: the %s cannot be pinned to the CPU (as in ComfyUI); it stays where it is",
                 ctx.node_id, what)
        return (handle,)
    known = _known_devices(ctx)
    request = _device_request(device, known)
    if known is not None and request != "cpu" and request not in known:
        log.warning("node %s: this machine has no device %r for the %s (it has: %s); the %s stays where "
                    "the engine places it", ctx.node_id, device, what, ", ".join(known) or "none", what)
        return (handle,)
    return (handle.with_options(device=request),)


def select_model_device(ctx: NodeContext, model, device: str = "default"):
    return _select(ctx, model, device, "model")


def select_clip_device(ctx: NodeContext, clip, device: str = "default"):
    return _select(ctx, clip, device, "CLIP")


def select_vae_device(ctx: NodeContext, vae, device: str = "default"):
    return _select(ctx, vae, device, "VAE", allow_cpu=False)


def work_units(ctx: NodeContext, model, max_gpus: int = 2, gpu_options=None, strategy: str = "cfg"):
    if max_gpus <= 1:                              # one device: nothing to split
        strategy = "none"
    return (with_parallel_request(model, strategy, max_gpus=int(max_gpus), speeds=tuple(gpu_options or ())),)


def gpu_options(ctx: NodeContext, device_index: int = 0, relative_speed: float = 1.0, gpu_options=None):
    """GPU_OPTIONS = ((device index, relative speed), ...); a later node's entry for the same index wins."""
    earlier = tuple(pair for pair in (gpu_options or ()) if pair[0] != int(device_index))
    return (earlier + ((int(device_index), float(relative_speed)),),)


def accept_any_device(paths, device: str = "default"):
    """Devices differ between machines: an unknown one warns at run time instead of failing validation."""
    return True


def _select_node(name: str, display: str, type_: str, fn, choices, what: str) -> NodeDef:
    return NodeDef(NodeSchema(
        name=name, display_name=display, category=CATEGORY,
        description=f"Runs the {what} on the chosen device: default (diffmesh's placement), "
                    "a device, or gpu:N (the Nth device). A device this machine lacks leaves it in place.",
        inputs=(inp(type_.lower(), type_), combo("device", choices)),
        outputs=out(type_), python_module=MODULE), fn, validate_inputs=accept_any_device)


NODES = (
    NodeDef(NodeSchema(
        name="MultiGPU_WorkUnits", display_name="MultiGPU CFG Split", category=CATEGORY,
        description="Splits each sampling step of this model over up to max_gpus devices (cond and uncond "
                    "side by side). Optional: relative speeds from MultiGPU Options, and diffmesh's strategy "
                    "('batch' splits the batch, 'sequence' splits a transformer's image tokens, 'patch' an SD "
                    "UNet's latent rows, 'auto' lets the planner choose).",
        inputs=(inp("model", "MODEL"), inp("max_gpus", "INT", default=2, min=1, step=1),
                inp("gpu_options", "GPU_OPTIONS", section="optional"),
                combo("strategy", ("cfg", "batch", "auto", "none", "sequence", "patch"), section="optional", default="cfg",
                      tooltip="diffmesh: how the sampling work is split.")),
        outputs=out("MODEL"), python_module=MODULE), work_units),
    NodeDef(NodeSchema(
        name="MultiGPU_Options", display_name="MultiGPU Options", category=CATEGORY,
        description="The relative speed of one device, for devices of quite different speed; chain one "
                    "per device into MultiGPU CFG Split.",
        inputs=(inp("device_index", "INT", default=0, min=0, max=64),
                inp("relative_speed", "FLOAT", default=1.0, min=0.0, step=0.01),
                inp("gpu_options", "GPU_OPTIONS", section="optional")),
        outputs=out("GPU_OPTIONS"), python_module=MODULE), gpu_options),
    _select_node("SelectModelDevice", "Select Model Device", "MODEL", select_model_device, device_choices,
                 "diffusion model"),
    _select_node("SelectCLIPDevice", "Select CLIP Device", "CLIP", select_clip_device, device_choices,
                 "text encoder"),
    _select_node("SelectVAEDevice", "Select VAE Device", "VAE", select_vae_device, vae_device_choices, "VAE"),
)

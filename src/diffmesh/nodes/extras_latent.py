"""Latent arithmetic and batch nodes of ComfyUI's comfy_extras/nodes_latent.py and nodes_rebatch.py
with ComfyUI's names, inputs, defaults and maths: Add, Subtract, Multiply, Interpolate, Concat, Cut,
Cut to Batch, Batch, Batch Seed Behavior, Rebatch Latents and Rebatch Images (list nodes).
Every node returns a copy of its input dict with keys replaced, never mutating the input.
"""

from __future__ import annotations

import torch

from diffmesh.nodes.base import NodeContext, OutputSpec
from diffmesh.nodes.dynamic_inputs import autogrow, nest
from diffmesh.nodes.extras_base import MAX_RESOLUTION, choice, outs, v3, v3_node
from diffmesh.nodes.extras_mask import repeat_to_batch_size
from diffmesh.nodes.image import common_upscale

LATENTS = "comfy_extras.nodes_latent"
REBATCH = "comfy_extras.nodes_rebatch"
ADVANCED = "model/latent/advanced"


def reshape_latent_to(shape: torch.Size, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """`latent` resized (bilinear, centre crop) to `shape`'s spatial size, its batch repeated to it."""
    if latent.shape[1:] != shape[1:]:
        latent = common_upscale(latent, shape[-1], shape[-2], "bilinear", "center")
    return repeat_to_batch_size(latent, shape[0]) if repeat_batch else latent


def latent_add(ctx: NodeContext, samples1: dict, samples2: dict):
    s1 = samples1["samples"]
    return ({**samples1, "samples": s1 + reshape_latent_to(s1.shape, samples2["samples"])},)


def latent_subtract(ctx: NodeContext, samples1: dict, samples2: dict):
    s1 = samples1["samples"]
    return ({**samples1, "samples": s1 - reshape_latent_to(s1.shape, samples2["samples"])},)


def latent_multiply(ctx: NodeContext, samples: dict, multiplier: float):
    return ({**samples, "samples": samples["samples"] * multiplier},)


def latent_interpolate(ctx: NodeContext, samples1: dict, samples2: dict, ratio: float):
    """Directions (channel-normalised) and magnitudes interpolated separately. The norms keep their
    channel axis, so batches above 1 work (ComfyUI broadcasts a (B,H,W) norm against (B,C,H,W) and
    fails there); for batch 1, ComfyUI's case, the numbers are the same."""
    s1 = samples1["samples"]
    s2 = reshape_latent_to(s1.shape, samples2["samples"])
    m1 = torch.linalg.vector_norm(s1, dim=1, keepdim=True)
    m2 = torch.linalg.vector_norm(s2, dim=1, keepdim=True)
    t = torch.nan_to_num(s1 / m1) * ratio + torch.nan_to_num(s2 / m2) * (1.0 - ratio)
    direction = torch.nan_to_num(t / torch.linalg.vector_norm(t, dim=1, keepdim=True))
    return ({**samples1, "samples": direction * (m1 * ratio + m2 * (1.0 - ratio))},)


def _axis(latent: torch.Tensor, dim: str) -> int:
    return latent.ndim - {"x": 1, "y": 2, "t": 3}[dim.strip("-")]


def latent_concat(ctx: NodeContext, samples1: dict, samples2: dict, dim: str):
    s1 = samples1["samples"]
    s2 = repeat_to_batch_size(samples2["samples"], s1.shape[0])
    parts = (s2, s1) if "-" in dim else (s1, s2)
    axis = {"x": -1, "y": -2, "t": -3}[dim.strip("-")]
    return ({**samples1, "samples": torch.cat(parts, dim=axis)},)


def latent_cut(ctx: NodeContext, samples: dict, dim: str, index: int, amount: int):
    s1 = samples["samples"]
    axis = _axis(s1, dim)
    if index >= 0:
        index = min(index, s1.shape[axis] - 1)
        amount = min(s1.shape[axis] - index, amount)
    else:
        index = max(index, -s1.shape[axis])
        amount = min(-index, amount)
    return ({**samples, "samples": torch.narrow(s1, axis, index, amount)},)


def latent_cut_to_batch(ctx: NodeContext, samples: dict, dim: str, slice_size: int):
    s1 = samples["samples"]
    axis = _axis(s1, dim)
    if axis < 2:
        return (samples,)
    moved = s1.movedim(axis, 1)
    if moved.shape[1] < slice_size:
        slice_size = moved.shape[1]
    elif moved.shape[1] % slice_size != 0:
        moved = moved[:, :moved.shape[1] // slice_size * slice_size]
    return ({**samples, "samples": moved.reshape([-1, slice_size] + list(moved.shape[2:])).movedim(1, axis)},)


def latent_batch(ctx: NodeContext, samples1: dict, samples2: dict):
    s1 = samples1["samples"]
    s2 = reshape_latent_to(s1.shape, samples2["samples"], repeat_batch=False)
    indices = (samples1.get("batch_index", list(range(s1.shape[0])))
               + samples2.get("batch_index", list(range(s2.shape[0]))))
    return ({**samples1, "samples": torch.cat((s1, s2), dim=0), "batch_index": indices},)


def latent_batch_seed_behavior(ctx: NodeContext, samples: dict, seed_behavior: str):
    out = dict(samples)
    if seed_behavior == "random":
        out.pop("batch_index", None)
    elif seed_behavior == "fixed":
        out["batch_index"] = [out.get("batch_index", [0])[0]] * samples["samples"].shape[0]
    return (out,)


def _grown(inputs: dict, parent: str, prefix: str) -> list:
    """An Autogrow's connected values in index order (prefix0, prefix1, ..., prefix10)."""
    grown = nest(inputs, parent)[parent]
    return [grown[k] for k in sorted(grown, key=lambda name: int(name.removeprefix(prefix)))]


def batch_masks_node(ctx: NodeContext, **inputs):
    """Masks joined along the batch, each resized (bilinear, centre crop) to the first one's size."""
    masks = _grown(inputs, "masks", "mask")
    first = masks[0].shape
    resized = [m if m.shape[1:] == first[1:] else
               common_upscale(m.unsqueeze(1), first[2], first[1], "bilinear", "center").squeeze(1) for m in masks]
    return (torch.cat(resized, dim=0),)


def batch_latents_node(ctx: NodeContext, **inputs):
    latents = _grown(inputs, "latents", "latent")
    first = latents[0]["samples"]
    indices = [i for latent in latents for i in latent.get("batch_index", range(latent["samples"].shape[0]))]
    samples = torch.cat([reshape_latent_to(first.shape, latent["samples"], repeat_batch=False) for latent in latents])
    return ({**latents[0], "samples": samples, "batch_index": indices},)


# -- rebatching (list nodes: every input arrives as a list) ---------------------------------------

def _latent_parts(latent: dict, offset: int) -> list:
    """[samples, noise mask (ones when absent, at 8x the latent size), batch indices]."""
    samples = latent["samples"]
    b, h, w = samples.shape[0], samples.shape[-2], samples.shape[-1]
    mask = latent.get("noise_mask", torch.ones((b, 1, h * 8, w * 8)))
    if mask.shape[0] < b:
        mask = mask.repeat((b - 1) // mask.shape[0] + 1, 1, 1, 1)[:b]
    return [samples, mask, list(latent.get("batch_index", [offset + i for i in range(b)]))]


def _emit(out: list, parts: list, start: int, size: int) -> None:
    out.append({"samples": parts[0][start:start + size], "noise_mask": parts[1][start:start + size],
                "batch_index": parts[2][start:start + size]})


def rebatch_latents(ctx: NodeContext, latents: list, batch_size: list):
    """ComfyUI's LatentRebatch: latents of one spatial size joined and cut into batches of
    `batch_size`; a size change closes the running batch. All-ones masks are dropped."""
    size = batch_size[0]
    out: list[dict] = []
    current = None
    processed = 0
    for latent in latents:
        parts = _latent_parts(latent, processed)
        processed += len(parts[2])
        if current is None:
            current = parts
        elif parts[0].shape[-2:] != current[0].shape[-2:]:
            _emit(out, current, 0, size)
            current = parts
        else:
            current = [torch.cat((current[0], parts[0])), torch.cat((current[1], parts[1])), current[2] + parts[2]]
        if current[0].shape[0] > size:
            full = current[0].shape[0] // size
            for i in range(full):
                _emit(out, current, i * size, size)
            rest = full * size
            current = None if rest >= current[0].shape[0] else [p[rest:] for p in current]
    if current is not None:
        _emit(out, current, 0, size)
    for entry in out:
        if entry["noise_mask"].mean() == 1.0:
            del entry["noise_mask"]
    return (out,)


def rebatch_images(ctx: NodeContext, images: list, batch_size: list):
    frames = [image[i:i + 1] for image in images for i in range(image.shape[0])]
    size = batch_size[0]
    return ([torch.cat(frames[i:i + size], dim=0) for i in range(0, len(frames), size)],)


def _pair(name, aliases, function, extra=()):
    return v3_node(name, name, ADVANCED, (v3("samples1", "LATENT"), v3("samples2", "LATENT")) + tuple(extra),
                   outs("LATENT"), function, LATENTS, search_aliases=aliases)


def _cut_size(name: str, default: int, low: int) -> object:
    return v3(name, "INT", default=default, min=low, max=MAX_RESOLUTION, step=1)


NODES = (
    _pair("LatentAdd", ("combine latents", "sum latents"), latent_add),
    _pair("LatentSubtract", ("difference latent", "remove features"), latent_subtract),
    v3_node("LatentMultiply", "LatentMultiply", ADVANCED,
            (v3("samples", "LATENT"), v3("multiplier", "FLOAT", default=1.0, min=-10.0, max=10.0, step=0.01)),
            outs("LATENT"), latent_multiply, LATENTS, search_aliases=("scale latent", "amplify latent", "latent gain")),
    _pair("LatentInterpolate", ("blend latent", "mix latent", "lerp latent", "transition"), latent_interpolate,
          (v3("ratio", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),)),
    _pair("LatentConcat", ("join latents", "stitch latents"), latent_concat,
          (choice("dim", ["x", "-x", "y", "-y", "t", "-t"]),)),
    v3_node("LatentCut", "LatentCut", ADVANCED,
            (v3("samples", "LATENT"), choice("dim", ["x", "y", "t"]), _cut_size("index", 0, -MAX_RESOLUTION),
             _cut_size("amount", 1, 1)),
            outs("LATENT"), latent_cut, LATENTS, search_aliases=("crop latent", "slice latent", "extract region")),
    v3_node("LatentCutToBatch", "LatentCutToBatch", ADVANCED,
            (v3("samples", "LATENT"), choice("dim", ["t", "x", "y"]), _cut_size("slice_size", 1, 1)),
            outs("LATENT"), latent_cut_to_batch, LATENTS,
            search_aliases=("slice to batch", "split latent", "tile latent")),
    v3_node("LatentBatch", "Batch Latents (DEPRECATED)", "model/latent/batch",
            (v3("samples1", "LATENT"), v3("samples2", "LATENT")), outs("LATENT"), latent_batch, LATENTS,
            deprecated=True, search_aliases=("combine latents", "merge latents", "join latents")),
    v3_node("LatentBatchSeedBehavior", "LatentBatchSeedBehavior", ADVANCED,
            (v3("samples", "LATENT"), choice("seed_behavior", ["random", "fixed"], default="fixed")),
            outs("LATENT"), latent_batch_seed_behavior, LATENTS),
    v3_node("BatchMasksNode", "Batch Masks", "image/mask",
            (autogrow("masks", v3("mask", "MASK"), prefix="mask", min=1, max=50),), outs("MASK"), batch_masks_node,
            "comfy_extras.nodes_post_processing", search_aliases=("combine masks", "stack masks", "merge masks")),
    v3_node("BatchLatentsNode", "Batch Latents", "model/latent/batch",
            (autogrow("latents", v3("latent", "LATENT"), prefix="latent", min=1, max=50),), outs("LATENT"),
            batch_latents_node, "comfy_extras.nodes_post_processing",
            search_aliases=("combine latents", "stack latents", "merge latents")),
    v3_node("RebatchLatents", "Rebatch Latents", "model/latent/batch",
            (v3("latents", "LATENT"), v3("batch_size", "INT", default=1, min=1, max=4096)),
            (OutputSpec("LATENT", is_list=True),), rebatch_latents, REBATCH, input_is_list=True),
    v3_node("RebatchImages", "Rebatch Images", "image/batch",
            (v3("images", "IMAGE"), v3("batch_size", "INT", default=1, min=1, max=4096)),
            (OutputSpec("IMAGE", is_list=True),), rebatch_images, REBATCH, input_is_list=True),
)

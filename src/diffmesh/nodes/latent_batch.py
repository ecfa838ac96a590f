"""Latent batch, compose and transform nodes of ComfyUI's nodes.py (names, inputs, defaults and
maths as ComfyUI's), plus VAE Encode (Tiled).

LATENT values are dicts `{"samples": (B,C,h,w), "noise_mask"?, "batch_index"?}`; every node returns
a copy of its input dict with keys replaced, never mutating the input.
"""

from __future__ import annotations

import math

import torch

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out
from diffmesh.nodes.image import common_upscale

MAX_RESOLUTION = 16384
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
FLIPS = ("x-axis: vertically", "y-axis: horizontally")


def _repeat_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` repeated along dim 0 until it has at least `rows` rows, cut to `rows`."""
    return t.repeat((math.ceil(rows / t.shape[0]),) + (1,) * (t.ndim - 1))[:rows]


def latent_from_batch(ctx: NodeContext, samples: dict, batch_index: int, length: int):
    latent = samples["samples"]
    start = min(latent.shape[0] - 1, batch_index)
    length = min(latent.shape[0] - start, length)
    result = {**samples, "samples": latent[start:start + length].clone()}
    if "noise_mask" in samples:
        masks = samples["noise_mask"]
        if masks.shape[0] == 1:
            result["noise_mask"] = masks.clone()
        else:
            if masks.shape[0] < latent.shape[0]:
                masks = _repeat_rows(masks, latent.shape[0])
            result["noise_mask"] = masks[start:start + length].clone()
    if "batch_index" in samples:
        result["batch_index"] = samples["batch_index"][start:start + length]
    else:
        result["batch_index"] = list(range(start, start + length))
    return (result,)


def repeat_latent_batch(ctx: NodeContext, samples: dict, amount: int):
    latent = samples["samples"]
    result = {**samples, "samples": latent.repeat((amount,) + (1,) * (latent.ndim - 1))}
    masks = samples.get("noise_mask")
    if masks is not None and masks.shape[0] > 1:
        # ComfyUI repeats the original mask batch (not one padded to the latent batch first)
        result["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.ndim - 1))
    if "batch_index" in samples:
        indices = samples["batch_index"]
        offset = max(indices) - min(indices) + 1
        result["batch_index"] = indices + [x + i * offset for i in range(1, amount) for x in indices]
    return (result,)


def _feather_mask(part: torch.Tensor, x: int, y: int, feather: int, to_h: int, to_w: int) -> torch.Tensor:
    """Weights ramping from 1/feather to 1 over `feather` latent pixels at each edge of the pasted
    part that lies inside the destination (edges on the destination's border stay hard)."""
    mask = torch.ones_like(part)
    h, w = part.shape[2], part.shape[3]
    for t in range(feather):
        weight = (1.0 / feather) * (t + 1)
        if y != 0:
            mask[:, :, t:1 + t, :] *= weight
        if y + h < to_h:
            mask[:, :, h - 1 - t:h - t, :] *= weight
        if x != 0:
            mask[:, :, :, t:1 + t] *= weight
        if x + w < to_w:
            mask[:, :, :, w - 1 - t:w - t] *= weight
    return mask


def latent_composite(ctx: NodeContext, samples_to: dict, samples_from: dict, x: int, y: int, feather: int):
    x, y, feather = x // 8, y // 8, feather // 8
    dest = samples_to["samples"]
    result = dest.clone()
    part = samples_from["samples"][:, :, :dest.shape[2] - y, :dest.shape[3] - x]
    h, w = part.shape[2], part.shape[3]
    if feather == 0:
        result[:, :, y:y + h, x:x + w] = part
    else:
        mask = _feather_mask(part, x, y, feather, dest.shape[2], dest.shape[3])
        result[:, :, y:y + h, x:x + w] = part * mask + result[:, :, y:y + h, x:x + w] * (1.0 - mask)
    return ({**samples_to, "samples": result},)


def latent_blend(ctx: NodeContext, samples1: dict, samples2: dict, blend_factor: float):
    first, second = samples1["samples"], samples2["samples"]
    if first.shape != second.shape:
        second = common_upscale(second, first.shape[3], first.shape[2], "bicubic", "center")
    return ({**samples1, "samples": first * blend_factor + second * (1 - blend_factor)},)


def latent_rotate(ctx: NodeContext, samples: dict, rotation: str):
    turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
    return ({**samples, "samples": torch.rot90(samples["samples"], k=turns, dims=[3, 2])},)


def latent_flip(ctx: NodeContext, samples: dict, flip_method: str):
    latent = samples["samples"]
    if flip_method.startswith("x"):
        latent = torch.flip(latent, dims=[2])
    elif flip_method.startswith("y"):
        latent = torch.flip(latent, dims=[3])
    return ({**samples, "samples": latent},)


def latent_crop(ctx: NodeContext, samples: dict, width: int, height: int, x: int, y: int):
    latent = samples["samples"]
    x = min(x // 8, latent.shape[3] - 8)           # at least 8 latent pixels (64 image pixels) remain
    y = min(y // 8, latent.shape[2] - 8)
    return ({**samples, "samples": latent[:, :, y:y + height // 8, x:x + width // 8]},)


def vae_encode_tiled(ctx: NodeContext, pixels: torch.Tensor, vae, tile_size: int, overlap: int,
                     temporal_size: int = 64, temporal_overlap: int = 8):
    """ComfyUI's tiled encode: three averaged tilings of `tile_size` pixels overlapping by `overlap`
    (`models.vae_tiles`); several workers share the tiles. temporal_*: video VAEs only (unused here)."""
    tiling = {"tile_size": tile_size, "overlap": overlap}
    return ({"samples": ctx.engine.vae_encode(vae, pixels[:, :, :, :3], tiling)},)


def _pixels(default: int, low: int = 0) -> dict:
    return dict(default=default, min=low, max=MAX_RESOLUTION, step=8)


NODES = (
    NodeDef(NodeSchema(
        name="LatentFromBatch", display_name="Latent From Batch", category="latent/batch",
        inputs=(inp("samples", "LATENT"), inp("batch_index", "INT", default=0, min=0, max=63),
                inp("length", "INT", default=1, min=1, max=64)),
        outputs=out("LATENT")), latent_from_batch),
    NodeDef(NodeSchema(
        name="RepeatLatentBatch", display_name="Repeat Latent Batch", category="latent/batch",
        inputs=(inp("samples", "LATENT"), inp("amount", "INT", default=1, min=1, max=64)),
        outputs=out("LATENT")), repeat_latent_batch),
    NodeDef(NodeSchema(
        name="LatentComposite", display_name="Latent Composite", category="latent",
        inputs=(inp("samples_to", "LATENT"), inp("samples_from", "LATENT"), inp("x", "INT", **_pixels(0)),
                inp("y", "INT", **_pixels(0)), inp("feather", "INT", **_pixels(0))),
        outputs=out("LATENT")), latent_composite),
    NodeDef(NodeSchema(
        name="LatentBlend", display_name="Latent Blend", category="_for_testing",
        inputs=(inp("samples1", "LATENT"), inp("samples2", "LATENT"),
                inp("blend_factor", "FLOAT", default=0.5, min=0, max=1, step=0.01)),
        outputs=out("LATENT")), latent_blend),
    NodeDef(NodeSchema(
        name="LatentRotate", display_name="Rotate Latent", category="latent/transform",
        inputs=(inp("samples", "LATENT"), combo("rotation", ROTATIONS)), outputs=out("LATENT")), latent_rotate),
    NodeDef(NodeSchema(
        name="LatentFlip", display_name="Flip Latent", category="latent/transform",
        inputs=(inp("samples", "LATENT"), combo("flip_method", FLIPS)), outputs=out("LATENT")), latent_flip),
    NodeDef(NodeSchema(
        name="LatentCrop", display_name="Crop Latent", category="latent/transform",
        inputs=(inp("samples", "LATENT"), inp("width", "INT", **_pixels(512, 64)),
                inp("height", "INT", **_pixels(512, 64)), inp("x", "INT", **_pixels(0)),
                inp("y", "INT", **_pixels(0))),
        outputs=out("LATENT")), latent_crop),
    NodeDef(NodeSchema(
        name="VAEEncodeTiled", display_name="VAE Encode (Tiled)", category="_for_testing",
        inputs=(inp("pixels", "IMAGE"), inp("vae", "VAE"),
                inp("tile_size", "INT", default=512, min=64, max=4096, step=64),
                inp("overlap", "INT", default=64, min=0, max=4096, step=32),
                inp("temporal_size", "INT", default=64, min=8, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to encode at a time."),
                inp("temporal_overlap", "INT", default=8, min=4, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to overlap.")),
        outputs=out("LATENT")), vae_encode_tiled),
)

"""Mask and masked-composite nodes of ComfyUI's comfy_extras/nodes_mask.py with ComfyUI's names,
inputs, defaults and maths: Latent/Image Composite Masked, Convert Mask<->Image, Image Color to
Mask, Solid Mask, Invert/Crop/Combine/Feather/Grow/Threshold Mask and Preview Mask.
MASK is (B,H,W) float; IMAGE (B,H,W,C); LATENT {"samples": (B,C,h,w)}.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from diffmesh.nodes.base import SAVE_HIDDEN, NodeContext
from diffmesh.nodes.extras_base import MAX_RESOLUTION, choice, outs, v3, v3_node
from diffmesh.nodes.io import save_images

MASKS = "comfy_extras.nodes_mask"
CHANNELS = ["red", "green", "blue", "alpha"]
OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]
PREVIEW_LETTERS = "abcdefghijklmnopqrstupvxyz"        # ComfyUI's V3 preview prefix alphabet, as it is


def repeat_to_batch_size(t: torch.Tensor, size: int) -> torch.Tensor:
    if t.shape[0] > size:
        return t[:size]
    if t.shape[0] < size:
        return t.repeat([math.ceil(size / t.shape[0])] + [1] * (t.ndim - 1))[:size]
    return t


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None,
              multiplier: int, resize_source: bool) -> torch.Tensor:
    """`source` (B,C,h,w) pasted into `destination` (changed in place) at pixel (x, y) divided by
    `multiplier`, blended by `mask` resized to the source; parts outside the destination dropped."""
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).clone(), size=source.shape[-2:],
                             mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])
    visible_w, visible_h = destination.shape[-1] - left + min(0, x), destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    blended = mask * source[..., :visible_h, :visible_w] + (1 - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = blended
    return destination


def latent_composite_masked(ctx: NodeContext, destination: dict, source: dict, x: int, y: int, resize_source: bool,
                            mask=None):
    samples = composite(destination["samples"].clone(), source["samples"], x, y, mask, 8, resize_source)
    return ({**destination, "samples": samples},)


def image_composite_masked(ctx: NodeContext, destination, source, x: int, y: int, resize_source: bool, mask=None):
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = F.pad(source, (0, 1), value=1.0)              # an opaque alpha channel
    out = composite(destination.clone().movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
    return (out.movedim(1, -1),)


def mask_to_image(ctx: NodeContext, mask):
    return (mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(-1, -1, -1, 3),)


def image_to_mask(ctx: NodeContext, image, channel: str):
    return (image[:, :, :, CHANNELS.index(channel)],)


def image_color_to_mask(ctx: NodeContext, image, color: int):
    rgb = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return (torch.where(packed == color, 1.0, 0).float(),)


def solid_mask(ctx: NodeContext, value: float, width: int, height: int):
    return (torch.full((1, height, width), value, dtype=torch.float32),)


def invert_mask(ctx: NodeContext, mask):
    return (1.0 - mask,)


def crop_mask(ctx: NodeContext, mask, x: int, y: int, width: int, height: int):
    return (mask.reshape(-1, mask.shape[-2], mask.shape[-1])[:, y:y + height, x:x + width],)


def mask_composite(ctx: NodeContext, destination, source, x: int, y: int, operation: str):
    output = destination.reshape(-1, destination.shape[-2], destination.shape[-1]).clone()
    source = source.reshape(-1, source.shape[-2], source.shape[-1])
    right, bottom = min(x + source.shape[-1], destination.shape[-1]), min(y + source.shape[-2], destination.shape[-2])
    src, dst = source[:, :bottom - y, :right - x], output[:, y:bottom, x:right]
    if operation in ("and", "or", "xor"):
        logic = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}[operation]
        output[:, y:bottom, x:right] = logic(dst.round().bool(), src.round().bool()).float()
    else:
        output[:, y:bottom, x:right] = {"multiply": dst * src, "add": dst + src, "subtract": dst - src}[operation]
    return (torch.clamp(output, 0.0, 1.0),)


def feather_mask(ctx: NodeContext, mask, left: int, top: int, right: int, bottom: int):
    """Linear ramps (k+1)/n over the n outer rows/columns of each side, as ComfyUI's loops."""
    out = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).clone()
    h, w = out.shape[-2:]
    left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)
    for k in range(left):
        out[:, :, k] *= (k + 1.0) / left
    for k in range(right):
        out[:, :, -(k + 1)] *= (k + 1) / right
    for k in range(top):
        out[:, k, :] *= (k + 1) / top
    for k in range(bottom):
        out[:, -(k + 1), :] *= (k + 1) / bottom
    return (out,)


def _grow_once(m: torch.Tensor, grow: bool, tapered: bool) -> torch.Tensor:
    """One grey dilation (erosion) of (B,H,W) with a 3x3 footprint (a cross when `tapered`);
    pixels beyond the border never win, like scipy's reflected border for this footprint."""
    fill = float("-inf") if grow else float("inf")
    padded = F.pad(m.unsqueeze(1), (1, 1, 1, 1), value=fill).squeeze(1)
    h, w = m.shape[-2:]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if not (tapered and dy and dx)]
    shifted = torch.stack([padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in offsets])
    return shifted.amax(dim=0) if grow else shifted.amin(dim=0)


def grow_mask(ctx: NodeContext, mask, expand: int, tapered_corners: bool):
    out = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
    for _ in range(abs(expand)):
        out = _grow_once(out, expand > 0, tapered_corners)
    return (out,)


def threshold_mask(ctx: NodeContext, mask, value: float):
    return ((mask > value).float(),)


def mask_preview(ctx: NodeContext, mask, prompt=None, extra_pnginfo=None):
    preview = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(-1, -1, -1, 3)
    prefix = ctx.state.setdefault("prefix", "ComfyUI_temp_" + "".join(random.choice(PREVIEW_LETTERS) for _ in range(5)))
    saved = save_images(ctx, preview, prefix, "temp", 1, prompt, extra_pnginfo)["ui"]["images"]
    return {"ui": {"images": saved, "animated": (False,)}, "result": (mask,)}


def _pos(default: int = 0, low: int = 0, step: int = 1) -> dict:
    return dict(default=default, min=low, max=MAX_RESOLUTION, step=step)


def _composite_inputs(kind: str, step: int) -> tuple:
    return (v3("destination", kind), v3("source", kind), v3("x", "INT", **_pos(step=step)),
            v3("y", "INT", **_pos(step=step)), v3("resize_source", "BOOLEAN", default=False),
            v3("mask", "MASK", "optional"))


def _mask_node(name, display, inputs, function, aliases=(), output=("MASK",), **fields):
    return v3_node(name, display, "image/mask", inputs, outs(*output), function, MASKS,
                   search_aliases=aliases, **fields)


NODES = (
    v3_node("LatentCompositeMasked", "Latent Composite Masked", "model/latent", _composite_inputs("LATENT", 8),
            outs("LATENT"), latent_composite_masked, MASKS,
            search_aliases=("overlay latent", "layer latent", "paste latent", "inpaint latent")),
    v3_node("ImageCompositeMasked", "Image Composite Masked", "image/compositing", _composite_inputs("IMAGE", 1),
            outs("IMAGE"), image_composite_masked, MASKS,
            search_aliases=("overlay", "layer", "paste image", "images composition")),
    _mask_node("MaskToImage", "Convert Mask to Image", (v3("mask", "MASK"),), mask_to_image, ("convert mask",),
               output=("IMAGE",)),
    _mask_node("ImageToMask", "Convert Image to Mask", (v3("image", "IMAGE"), choice("channel", CHANNELS)),
               image_to_mask, ("extract channel", "channel to mask")),
    _mask_node("ImageColorToMask", "Convert Image Color to Mask",
               (v3("image", "IMAGE"), v3("color", "INT", default=0, min=0, max=0xFFFFFF, step=1, display="number")),
               image_color_to_mask, ("color keying", "chroma key")),
    _mask_node("SolidMask", "Create Solid Mask",
               (v3("value", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01), v3("width", "INT", **_pos(512, 1)),
                v3("height", "INT", **_pos(512, 1))), solid_mask),
    _mask_node("InvertMask", "Invert Mask", (v3("mask", "MASK"),), invert_mask, ("reverse mask", "flip mask")),
    _mask_node("CropMask", "Crop Mask",
               (v3("mask", "MASK"), v3("x", "INT", **_pos()), v3("y", "INT", **_pos()),
                v3("width", "INT", **_pos(512, 1)), v3("height", "INT", **_pos(512, 1))),
               crop_mask, ("cut mask", "extract mask region", "mask slice")),
    _mask_node("MaskComposite", "Combine Masks",
               (v3("destination", "MASK"), v3("source", "MASK"), v3("x", "INT", **_pos()), v3("y", "INT", **_pos()),
                choice("operation", OPERATIONS)),
               mask_composite, ("combine masks", "blend masks", "layer masks", "masks composition")),
    _mask_node("FeatherMask", "Feather Mask",
               (v3("mask", "MASK"),) + tuple(v3(side, "INT", **_pos()) for side in ("left", "top", "right", "bottom")),
               feather_mask, ("soft edge mask", "blur mask edges", "gradient mask edge")),
    _mask_node("GrowMask", "Grow Mask",
               (v3("mask", "MASK"), v3("expand", "INT", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                v3("tapered_corners", "BOOLEAN", advanced=True, default=True)),
               grow_mask, ("expand mask", "shrink mask")),
    _mask_node("ThresholdMask", "Threshold Mask",
               (v3("mask", "MASK"), v3("value", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01)),
               threshold_mask, ("binary mask",)),
    v3_node("MaskPreview", "Preview Mask", "image/mask", (v3("mask", "MASK"),), outs(("MASK", "mask")), mask_preview,
            MASKS, output_node=True, hidden=SAVE_HIDDEN,
            description="Preview the masks without saving them to the ComfyUI output directory.",
            search_aliases=("show mask", "view mask", "inspect mask", "debug mask")),
)

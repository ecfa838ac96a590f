"""Resize Image/Mask (ComfyUI's comfy_extras/nodes_post_processing.py `ResizeImageMaskNode`) and
Compare Images (nodes_image_compare.py) with ComfyUI's names, inputs, defaults and maths.

Resize takes an IMAGE (B,H,W,C) or a MASK (B,H,W) and returns the same kind; how it resizes is a
V3 DynamicCombo whose option brings its own inputs (`resize_type.width`, `resize_type.multiplier`,
...), resolved from the prompt's dotted inputs.
"""

from __future__ import annotations

import math

import torch

from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.dynamic_inputs import dynamic_combo, match_type, nest
from diffmesh.nodes.extras_base import MAX_RESOLUTION, choice, v3, v3_node
from diffmesh.nodes.base import OutputSpec
from diffmesh.nodes.image import common_upscale
from diffmesh.nodes.io import save_images

SCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def _resize(data: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """common_upscale on an image (B,H,W,C) or a mask (B,H,W), returning the same layout."""
    image = data.ndim == 4
    samples = data.movedim(-1, 1) if image else data.unsqueeze(1)
    out = common_upscale(samples, width, height, method, crop)
    return out.movedim(1, -1) if image else out.squeeze(1)


def _size(data: torch.Tensor) -> tuple[int, int]:
    """(width, height) of an image or a mask."""
    return (data.shape[2], data.shape[1])


def scale_dimensions(data, width: int, height: int, method: str, crop: str = "disabled"):
    if width == 0 and height == 0:
        return data
    w, h = _size(data)
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return _resize(data, width, height, method, crop)


def scale_side(data, size: int, method: str, longer: bool):
    """The longer (or shorter) side to `size`, the other in proportion; squares to size x size."""
    w, h = _size(data)
    if w == h:
        return _resize(data, size, size, method)
    if (h > w) == longer:
        return _resize(data, round(w / h * size), size, method)
    return _resize(data, size, round(h / w * size), method)


def scale_total_pixels(data, megapixels: float, method: str):
    w, h = _size(data)
    factor = math.sqrt(int(megapixels * 1024 * 1024) / (w * h))
    return _resize(data, round(w * factor), round(h * factor), method)


def scale_to_multiple_cover(data, multiple: int, method: str):
    """Scale to cover the largest size divisible by `multiple`, then centre-crop to it."""
    if multiple <= 1:
        return data
    w, h = _size(data)
    target_w, target_h = w // multiple * multiple, h // multiple * multiple
    if target_w == 0 or target_h == 0 or (target_w == w and target_h == h):
        return data
    if target_w / w >= target_h / h:
        scaled_w, scaled_h = target_w, max(target_h, int(math.ceil(h * target_w / w)))
    else:
        scaled_w, scaled_h = max(target_w, int(math.ceil(w * target_h / h))), target_h
    out = _resize(data, scaled_w, scaled_h, method)
    x0, y0 = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
    return out[:, y0:y0 + target_h, x0:x0 + target_w]


def resize_image_mask(ctx: NodeContext, input: torch.Tensor, scale_method: str, **dynamic):  # noqa: A002
    options = nest(dynamic, "resize_type")["resize_type"]
    kind = options["resize_type"]
    if kind == "scale by multiplier":
        w, h = _size(input)
        return (_resize(input, round(w * options["multiplier"]), round(h * options["multiplier"]), scale_method),)
    if kind == "scale dimensions":
        return (scale_dimensions(input, options["width"], options["height"], scale_method, options["crop"]),)
    if kind in ("scale longer dimension", "scale shorter dimension"):
        size = options["longer_size"] if kind.startswith("scale longer") else options["shorter_size"]
        return (scale_side(input, size, scale_method, kind.startswith("scale longer")),)
    if kind == "scale width":
        return (scale_dimensions(input, options["width"], 0, scale_method),)
    if kind == "scale height":
        return (scale_dimensions(input, 0, options["height"], scale_method),)
    if kind == "scale total pixels":
        return (scale_total_pixels(input, options["megapixels"], scale_method),)
    if kind == "match size":
        width, height = _size(options["match"])
        return (_resize(input, width, height, scale_method, options["crop"]),)
    if kind == "scale to multiple":
        return (scale_to_multiple_cover(input, options["multiple"], scale_method),)
    raise ValueError(f"Resize Image/Mask: unsupported resize_type {kind!r}; pick one of the node's options")


def image_compare(ctx: NodeContext, image_a=None, image_b=None, compare_view=None):
    """Both images saved as previews (temp folder, ComfyUI's "comfy.compare.a/b" prefixes)."""
    result = {"a_images": [], "b_images": []}
    for key, images, prefix in (("a_images", image_a, "comfy.compare.a"), ("b_images", image_b, "comfy.compare.b")):
        if images is not None and len(images) > 0:
            result[key] = save_images(ctx, images, prefix, "temp", 1)["ui"]["images"]
    return {"ui": result}


def _px(name: str, tooltip: str, default: int = 512, low: int = 0) -> object:
    return v3(name, "INT", tooltip=tooltip, default=default, min=low, max=MAX_RESOLUTION, step=1)


def _resize_type():
    crop = choice("crop", ["disabled", "center"], default="center",
                  tooltip=("How to handle aspect ratio mismatch: 'disabled' stretches to fit, 'center' crops to "
                           "maintain aspect ratio."))
    auto = "Set to 0 to auto-calculate from {} while preserving aspect ratio."
    keep = "auto-adjusts to preserve aspect ratio."
    return dynamic_combo("resize_type", [
        ("scale dimensions", (_px("width", "Target width in pixels. " + auto.format("height")),
                              _px("height", "Target height in pixels. " + auto.format("width")), crop)),
        ("scale by multiplier", (v3("multiplier", "FLOAT", tooltip="Scale factor (e.g., 2.0 doubles size, 0.5 halves size).",
                                    default=1.0, min=0.01, max=8.0, step=0.01),)),
        ("scale longer dimension", (_px("longer_size", "The longer edge will be resized to this value. "
                                                       "Aspect ratio is preserved."),)),
        ("scale shorter dimension", (_px("shorter_size", "The shorter edge will be resized to this value. "
                                                         "Aspect ratio is preserved."),)),
        ("scale width", (_px("width", "Target width in pixels. Height " + keep),)),
        ("scale height", (_px("height", "Target height in pixels. Width " + keep),)),
        ("scale total pixels", (v3("megapixels", "FLOAT", tooltip=("Target total megapixels (e.g., 1.0 ≈ 1024×1024). "
                                                                   "Aspect ratio is preserved."),
                                   default=1.0, min=0.01, max=16.0, step=0.01),)),
        ("match size", (v3("match", "IMAGE,MASK", tooltip=("Resize input to match the dimensions of this reference "
                                                          "image or mask.")), crop)),
        ("scale to multiple", (_px("multiple", ("Resize so width and height are divisible by this number. Useful for "
                                                "latent alignment (e.g., 8 or 64)."), 8, 1),)),
    ], tooltip="Select how to resize: by exact dimensions, scale factor, matching another image, etc.")


NODES = (
    v3_node("ResizeImageMaskNode", "Resize Image/Mask", "image/transform",
            (match_type("input", "input_type", "IMAGE,MASK"), _resize_type(),
             choice("scale_method", SCALE_METHODS, default="area",
                    tooltip=("Interpolation algorithm. 'area' is best for downscaling, 'lanczos' for upscaling, "
                             "'nearest-exact' for pixel art."))),
            (OutputSpec("COMFY_MATCHTYPE_V3", "resized"),), resize_image_mask, "comfy_extras.nodes_post_processing",
            description="Resize an image or mask using various scaling methods.", output_matchtypes=("input_type",),
            search_aliases=("resize", "resize image", "resize mask", "scale", "scale image", "scale mask",
                            "image resize", "change size", "dimensions", "shrink", "enlarge")),
    v3_node("ImageCompare", "Compare Images", "image",
            (v3("image_a", "IMAGE", "optional"), v3("image_b", "IMAGE", "optional"),
             v3("compare_view", "IMAGECOMPARE", socketless=True)),
            (), image_compare, "comfy_extras.nodes_image_compare", output_node=True, experimental=True,
            description="Compares two images side by side with a slider.", essentials_category="Image Tools"),
)

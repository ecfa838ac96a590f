"""Image resizing nodes and the resize helper shared with the latent nodes (spec §4.4)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out

MAX_RESOLUTION = 16384
IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")


def center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop (B,C,H,W) to the aspect ratio of width×height, keeping the centre."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., y:old_h - y, x:old_w - x]


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors (last dim), magnitudes interpolated linearly."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    omega = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0).acos()
    so = omega.sin()
    small = so.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(so), so)
    direction = torch.where(small, ua * (1 - t) + ub * t,
                            ((1 - t) * omega).sin() / safe * ua + (t * omega).sin() / safe * ub)
    return direction * (na * (1 - t) + nb * t)


def _bislerp_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resize `x` (B,C,H,W) along spatial `dim` (2 or 3) by slerping neighbouring samples."""
    n = x.shape[dim]
    src = ((torch.arange(size, dtype=torch.float64) + 0.5) * n / size - 0.5).clamp(0, n - 1)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n - 1)
    t = (src - i0).to(x.dtype)
    a, b = x.index_select(dim, i0).movedim(1, -1), x.index_select(dim, i1).movedim(1, -1)
    shape = [1] * a.dim()
    shape[dim - 1] = size          # after movedim(1, -1) spatial dims shift left by one
    return _slerp(a, b, t.reshape(shape)).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return _bislerp_axis(_bislerp_axis(samples.float(), width, 3), height, 2).to(samples.dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """PIL LANCZOS on uint8-quantised images, one per batch element."""
    frames = []
    for image in samples.movedim(1, -1):
        array = torch.clamp(torch.round(image * 255.0), 0, 255).to(torch.uint8).numpy()
        if array.shape[-1] == 1:
            array = array[..., 0]
        resized = np.asarray(Image.fromarray(array).resize((width, height), Image.LANCZOS), dtype=np.float32)
        frames.append(torch.from_numpy(resized.reshape(height, width, -1) / 255.0))
    return torch.stack(frames).movedim(-1, 1).to(samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize (B,C,H,W) to (B,C,height,width): optional centre crop, then the named method.

    5-D latents (B,C,T,H,W) of the Wan-format models resize frame by frame (frames folded into the batch)."""
    if samples.ndim == 5:
        b, c, t = samples.shape[:3]
        frames = samples.movedim(2, 1).reshape(b * t, c, samples.shape[-2], samples.shape[-1])
        out = common_upscale(frames, width, height, method, crop)
        return out.reshape(b, t, c, height, width).movedim(1, 2)
    if crop == "center":
        samples = center_crop(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        return lanczos(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def image_scale(ctx: NodeContext, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str):
    if width == 0 and height == 0:
        return (image,)
    samples = image.movedim(-1, 1)                      # (B,H,W,C) -> (B,C,H,W)
    if width == 0:
        width = max(1, round(samples.shape[3] * height / samples.shape[2]))
    elif height == 0:
        height = max(1, round(samples.shape[2] * width / samples.shape[3]))
    return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)


def image_scale_by(ctx: NodeContext, image: torch.Tensor, upscale_method: str, scale_by: float):
    samples = image.movedim(-1, 1)
    width, height = round(samples.shape[3] * scale_by), round(samples.shape[2] * scale_by)
    return (common_upscale(samples, width, height, upscale_method, "disabled").movedim(1, -1),)


NODES = (
    NodeDef(NodeSchema(
        name="ImageScale", display_name="Upscale Image", category="image/upscaling",
        inputs=(inp("image", "IMAGE"), combo("upscale_method", IMAGE_METHODS),
                inp("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
                inp("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
                combo("crop", CROP_METHODS)),
        outputs=out("IMAGE")), image_scale),
    NodeDef(NodeSchema(
        name="ImageScaleBy", display_name="Upscale Image By", category="image/upscaling",
        inputs=(inp("image", "IMAGE"), combo("upscale_method", IMAGE_METHODS),
                inp("scale_by", "FLOAT", default=1.0, min=0.01, max=8.0, step=0.01)),
        outputs=out("IMAGE")), image_scale_by),
)

"""Image composition nodes of ComfyUI's comfy_extras with ComfyUI's names, inputs, defaults and
maths: Stitch Images and Resize And Pad Image (nodes_images.py), Join Image with Alpha
(nodes_compositing.py). IMAGE is (B,H,W,C) float in [0,1]; MASK (B,H,W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.extras_base import MAX_RESOLUTION, choice, outs, v3, v3_node
from diffmesh.nodes.extras_mask import repeat_to_batch_size
from diffmesh.nodes.image import common_upscale

COLORS = {"white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _extend_batch(image: torch.Tensor, size: int) -> torch.Tensor:
    """The last image repeated until the batch has `size` images."""
    if image.shape[0] >= size:
        return image
    return torch.cat([image, image[-1:].repeat(size - image.shape[0], 1, 1, 1)])


def _pad_centered(image: torch.Tensor, axis: int, size: int, value: float) -> torch.Tensor:
    """Pad axis 1 (height) or 2 (width) of (B,H,W,C) to `size`, the extra split before/after."""
    extra = size - image.shape[axis]
    if extra <= 0:
        return image
    before, after = extra // 2, extra - extra // 2
    pads = (0, 0, before, after) if axis == 2 else (0, 0, 0, 0, before, after)
    return F.pad(image, pads, mode="constant", value=value)


def _with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[-1] >= channels:
        return image
    return torch.cat([image, torch.ones(*image.shape[:-1], channels - image.shape[-1])], dim=-1)


def _spacer(shape: tuple, color) -> torch.Tensor:
    spacer = torch.zeros(shape)
    if isinstance(color, tuple):
        for index, value in enumerate(color[:shape[-1]]):
            spacer[..., index] = value
    else:
        spacer[..., :min(3, shape[-1])] = color
    if shape[-1] == 4:
        spacer[..., 3] = 1.0
    return spacer


def image_stitch(ctx: NodeContext, image1, direction: str, match_image_size: bool, spacing_width: int,
                 spacing_color: str, image2=None):
    if image2 is None:
        return (image1,)
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = _extend_batch(image1, batch), _extend_batch(image2, batch)
    horizontal = direction in ("left", "right")
    color = COLORS[spacing_color]
    if match_image_size:
        (h1, w1), (h2, w2) = image1.shape[1:3], image2.shape[1:3]
        aspect = w2 / h2
        size = (int(h1 * aspect), h1) if horizontal else (w1, int(w1 / aspect))
        image2 = common_upscale(image2.movedim(-1, 1), size[0], size[1], "lanczos", "disabled").movedim(1, -1)
    else:
        axis = 1 if horizontal else 2
        value = 0.0 if isinstance(color, tuple) else color
        size = max(image1.shape[axis], image2.shape[axis])
        image1, image2 = _pad_centered(image1, axis, size, value), _pad_centered(image2, axis, size, value)
    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = _with_channels(image1, channels), _with_channels(image2, channels)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing_width > 0:
        width = spacing_width + spacing_width % 2                      # even, as ComfyUI
        shape = ((batch, max(image1.shape[1], image2.shape[1]), width, channels) if horizontal
                 else (batch, width, max(image1.shape[2], image2.shape[2]), channels))
        parts.insert(1, _spacer(shape, color))
    return (torch.cat(parts, dim=2 if horizontal else 1),)


def resize_and_pad(ctx: NodeContext, image, target_width: int, target_height: int, padding_color: str,
                   interpolation: str):
    batch, height, width, channels = image.shape
    scale = min(target_width / width, target_height / height)
    new_w, new_h = int(width * scale), int(height * scale)
    resized = common_upscale(image.permute(0, 3, 1, 2), new_w, new_h, interpolation, "disabled")
    padded = torch.full((batch, channels, target_height, target_width), 0.0 if padding_color == "black" else 1.0,
                        dtype=image.dtype)
    top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
    padded[:, :, top:top + new_h, left:left + new_w] = resized
    return (padded.permute(0, 2, 3, 1),)


def join_image_with_alpha(ctx: NodeContext, image, alpha):
    batch = max(len(image), len(alpha))
    mask = F.interpolate(alpha.to(image).reshape(-1, 1, alpha.shape[-2], alpha.shape[-1]), size=image.shape[1:3],
                         mode="bilinear").squeeze(1)
    alpha_channel = repeat_to_batch_size(1.0 - mask, batch)
    return (torch.cat((repeat_to_batch_size(image, batch)[..., :3], alpha_channel.unsqueeze(-1)), dim=-1),)


NODES = (
    v3_node("ImageStitch", "Stitch Images", "image/transform",
            (v3("image1", "IMAGE"), choice("direction", ["right", "down", "left", "up"], default="right"),
             v3("match_image_size", "BOOLEAN", default=True),
             v3("spacing_width", "INT", advanced=True, default=0, min=0, max=1024, step=2),
             choice("spacing_color", list(COLORS), default="white", advanced=True),
             v3("image2", "IMAGE", "optional")),
            outs("IMAGE"), image_stitch, "comfy_extras.nodes_images",
            description=("Stitches image2 to image1 in the specified direction.\n"
                         "If image2 is not provided, returns image1 unchanged.\n"
                         "Optional spacing can be added between images."),
            search_aliases=("combine images", "join images", "concatenate images", "side by side")),
    v3_node("ResizeAndPadImage", "Resize And Pad Image", "image/transform",
            (v3("image", "IMAGE"), v3("target_width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
             v3("target_height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
             choice("padding_color", ["white", "black"], advanced=True),
             choice("interpolation", ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], advanced=True)),
            outs("IMAGE"), resize_and_pad, "comfy_extras.nodes_images", search_aliases=("fit to size",)),
    v3_node("JoinImageWithAlpha", "Join Image with Alpha", "image/compositing",
            (v3("image", "IMAGE"), v3("alpha", "MASK")), outs("IMAGE"), join_image_with_alpha,
            "comfy_extras.nodes_compositing",
            search_aliases=("add transparency", "apply alpha", "composite alpha", "RGBA")),
)

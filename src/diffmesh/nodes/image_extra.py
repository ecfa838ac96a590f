"""Image and mask nodes of ComfyUI's nodes.py: Load Image (as Mask), Load Image (from Outputs),
Invert Image, Batch Images, Pad Image for Outpainting, EmptyImage (names, inputs, defaults and
maths as ComfyUI's). IMAGE is (B,H,W,C) float in [0,1]; MASK is (B,H,W)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out
from diffmesh.nodes.image import common_upscale
from diffmesh.nodes.io import annotated_path, file_sha256, input_files, load_image, load_image_changed, \
    load_image_valid

MAX_RESOLUTION = 16384
CHANNELS = ("alpha", "red", "green", "blue")


def load_image_mask(ctx: NodeContext, image: str, channel: str):
    picture = ImageOps.exif_transpose(Image.open(annotated_path(ctx.paths, image)))
    if picture.getbands() != ("R", "G", "B", "A"):
        if picture.mode == "I":
            picture = picture.point(lambda v: v * (1 / 255))
        picture = picture.convert("RGBA")
    band = channel[0].upper()
    if band in picture.getbands():
        mask = torch.from_numpy(np.array(picture.getchannel(band)).astype(np.float32) / 255.0)
        if band == "A":
            mask = 1.0 - mask                      # ComfyUI: opaque = 0, transparent = 1
    else:
        mask = torch.zeros((64, 64), dtype=torch.float32)
    return (mask.unsqueeze(0),)


def load_image_mask_changed(paths, image: str, channel: str = "alpha") -> str:
    return file_sha256(annotated_path(paths, image))


def invert(ctx: NodeContext, image: torch.Tensor):
    return (1.0 - image,)


def batch(ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor):
    if image1.shape[1:] != image2.shape[1:]:
        image2 = common_upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear",
                                "center").movedim(1, -1)
    return (torch.cat((image1, image2), dim=0),)


def empty_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0):
    channels = [torch.full([batch_size, height, width, 1], ((color >> shift) & 0xFF) / 0xFF) for shift in (16, 8, 0)]
    return (torch.cat(channels, dim=-1),)


def _outpaint_feather(h: int, w: int, top: int, bottom: int, left: int, right: int, feathering: int) -> torch.Tensor:
    """(h, w) mask over the original image: ((feathering - d) / feathering)^2 within `feathering`
    pixels of a padded side (d = distance to it), 0 elsewhere."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    far_h, far_w = torch.full((h, w), float(h)), torch.full((h, w), float(w))
    distance = torch.stack([rows if top != 0 else far_h, h - rows if bottom != 0 else far_h,
                            cols if left != 0 else far_w, w - cols if right != 0 else far_w]).min(dim=0).values
    value = ((feathering - distance) / feathering) ** 2
    return torch.where(distance >= feathering, torch.zeros_like(value), value)


def pad_for_outpaint(ctx: NodeContext, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int):
    b, h, w, c = image.shape
    padded = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
    padded[:, top:top + h, left:left + w, :] = image
    mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
    inner = torch.zeros((h, w), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        inner = _outpaint_feather(h, w, top, bottom, left, right, feathering)
    mask[top:top + h, left:left + w] = inner
    return (padded, mask.unsqueeze(0))


def _all_input_files(env) -> list[str]:
    return input_files(env, lambda name: True)


def _pad(default: int = 0, step: int = 8) -> dict:
    return dict(default=default, min=0, max=MAX_RESOLUTION, step=step)


NODES = (
    NodeDef(NodeSchema(
        name="LoadImageMask", display_name="Load Image (as Mask)", category="mask",
        inputs=(combo("image", _all_input_files, image_upload=True), combo("channel", CHANNELS)),
        outputs=out("MASK")),
        load_image_mask, is_changed=load_image_mask_changed, validate_inputs=load_image_valid),
    NodeDef(NodeSchema(
        name="LoadImageOutput", display_name="Load Image (from Outputs)", category="image",
        description=("Load an image from the output folder. When the refresh button is clicked, the node will "
                     "update the image list and automatically select the first image, allowing for easy iteration."),
        inputs=(inp("image", "COMBO", image_upload=True, image_folder="output",
                    remote={"route": "/internal/files/output", "refresh_button": True,
                            "control_after_refresh": "first"}),),
        outputs=out("IMAGE", "MASK"), experimental=True),
        load_image, is_changed=load_image_changed, validate_inputs=load_image_valid),
    NodeDef(NodeSchema(
        name="ImageInvert", display_name="Invert Image", category="image",
        inputs=(inp("image", "IMAGE"),), outputs=out("IMAGE")), invert),
    NodeDef(NodeSchema(
        name="ImageBatch", display_name="Batch Images", category="image",
        inputs=(inp("image1", "IMAGE"), inp("image2", "IMAGE")), outputs=out("IMAGE")), batch),
    NodeDef(NodeSchema(
        name="ImagePadForOutpaint", display_name="Pad Image for Outpainting", category="image",
        inputs=(inp("image", "IMAGE"), inp("left", "INT", **_pad()), inp("top", "INT", **_pad()),
                inp("right", "INT", **_pad()), inp("bottom", "INT", **_pad()),
                inp("feathering", "INT", **_pad(40, 1))),
        outputs=out("IMAGE", "MASK")), pad_for_outpaint),
    NodeDef(NodeSchema(
        name="EmptyImage", display_name="EmptyImage", category="image",
        inputs=(inp("width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
                inp("height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
                inp("batch_size", "INT", default=1, min=1, max=4096),
                inp("color", "INT", default=0, min=0, max=0xFFFFFF, step=1, display="color")),
        outputs=out("IMAGE")), empty_image),
)

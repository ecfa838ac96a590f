"""Latent nodes and the VAE nodes (VAE work runs on a worker through the engine).

LATENT values are dicts `{"samples": (B,4,h,w) unscaled float32, "noise_mask"?, "batch_index"?}`;
nodes copy the dict and replace keys, never mutate their inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out
from diffmesh.nodes.image import CROP_METHODS, common_upscale

MAX_RESOLUTION = 16384
LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


def empty_latent(ctx: NodeContext, width: int, height: int, batch_size: int = 1):
    return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


def latent_upscale(ctx: NodeContext, samples: dict, upscale_method: str, width: int, height: int, crop: str):
    if width == 0 and height == 0:
        return (samples,)
    latent = samples["samples"]
    if width == 0:
        height = max(64, height)
        width = max(64, round(latent.shape[-1] * height / latent.shape[-2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(latent.shape[-2] * width / latent.shape[-1]))
    else:
        width, height = max(64, width), max(64, height)
    return ({**samples, "samples": common_upscale(latent, width // 8, height // 8, upscale_method, crop)},)


def latent_upscale_by(ctx: NodeContext, samples: dict, upscale_method: str, scale_by: float):
    latent = samples["samples"]
    width, height = round(latent.shape[-1] * scale_by), round(latent.shape[-2] * scale_by)
    return ({**samples, "samples": common_upscale(latent, width, height, upscale_method, "disabled")},)


def set_noise_mask(ctx: NodeContext, samples: dict, mask: torch.Tensor):
    return ({**samples, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))},)


def vae_decode(ctx: NodeContext, samples: dict, vae):
    images = ctx.engine.vae_decode(vae, samples["samples"])
    if images.dim() == 5:                                  # video VAEs: fold frames into the batch
        images = images.reshape(-1, *images.shape[-3:])
    return (images,)


def vae_decode_tiled(ctx: NodeContext, samples: dict, vae, tile_size: int, overlap: int = 64,
                     temporal_size: int = 64, temporal_overlap: int = 8):
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    # Tile size and overlap in image pixels (VAEModel.decode_tiled converts to latent pixels).
    tiling = {"tile_size": tile_size, "overlap": overlap}
    return (ctx.engine.vae_decode(vae, samples["samples"], tiling),)


def vae_encode(ctx: NodeContext, pixels: torch.Tensor, vae):
    return ({"samples": ctx.engine.vae_encode(vae, pixels)},)


def vae_encode_for_inpaint(ctx: NodeContext, pixels: torch.Tensor, vae, mask: torch.Tensor, grow_mask_by: int = 6):
    """Grey out the masked pixels, encode, and return the grown mask as the latent noise mask."""
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                         size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")      # (B,1,H,W)
    pixels = pixels.clone()
    if pixels.shape[1] != h or pixels.shape[2] != w:
        dy, dx = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        pixels = pixels[:, dy:h + dy, dx:w + dx, :]
        mask = mask[:, :, dy:h + dy, dx:w + dx]
    if grow_mask_by == 0:
        grown = mask
    else:
        kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
        padding = math.ceil((grow_mask_by - 1) / 2)
        grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=padding), 0, 1)
    keep = (1.0 - mask.round()).squeeze(1)[..., None]                                    # (B,H,W,1)
    pixels[..., :3] = (pixels[..., :3] - 0.5) * keep + 0.5
    latent = ctx.engine.vae_encode(vae, pixels)
    return ({"samples": latent, "noise_mask": grown[:, :, :h, :w].round()},)


NODES = (
    NodeDef(NodeSchema(
        name="EmptyLatentImage", display_name="Empty Latent Image", category="latent",
        description="Create a new batch of empty latent images to be denoised via sampling.",
        inputs=(inp("width", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8,
                    tooltip="The width of the latent images in pixels."),
                inp("height", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8,
                    tooltip="The height of the latent images in pixels."),
                inp("batch_size", "INT", default=1, min=1, max=4096,
                    tooltip="The number of latent images in the batch.")),
        outputs=out("LATENT"), output_tooltips=("The empty latent image batch.",)), empty_latent),
    NodeDef(NodeSchema(
        name="LatentUpscale", display_name="Upscale Latent", category="latent",
        inputs=(inp("samples", "LATENT"), combo("upscale_method", LATENT_METHODS),
                inp("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
                inp("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
                combo("crop", CROP_METHODS)),
        outputs=out("LATENT")), latent_upscale),
    NodeDef(NodeSchema(
        name="LatentUpscaleBy", display_name="Upscale Latent By", category="latent",
        inputs=(inp("samples", "LATENT"), combo("upscale_method", LATENT_METHODS),
                inp("scale_by", "FLOAT", default=1.5, min=0.01, max=8.0, step=0.01)),
        outputs=out("LATENT")), latent_upscale_by),
    NodeDef(NodeSchema(
        name="SetLatentNoiseMask", display_name="Set Latent Noise Mask", category="latent/inpaint",
        inputs=(inp("samples", "LATENT"), inp("mask", "MASK")), outputs=out("LATENT")), set_noise_mask),
    NodeDef(NodeSchema(
        name="VAEDecode", display_name="VAE Decode", category="latent",
        description="Decodes latent images back into pixel space images.",
        inputs=(inp("samples", "LATENT", tooltip="The latent to be decoded."),
                inp("vae", "VAE", tooltip="The VAE model used for decoding the latent.")),
        outputs=out("IMAGE"), output_tooltips=("The decoded image.",)), vae_decode),
    NodeDef(NodeSchema(
        name="VAEDecodeTiled", display_name="VAE Decode (Tiled)", category="_for_testing",
        inputs=(inp("samples", "LATENT"), inp("vae", "VAE"),
                inp("tile_size", "INT", default=512, min=64, max=4096, step=32),
                inp("overlap", "INT", default=64, min=0, max=4096, step=32),
                inp("temporal_size", "INT", default=64, min=8, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to decode at a time."),
                inp("temporal_overlap", "INT", default=8, min=4, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to overlap.")),
        outputs=out("IMAGE")), vae_decode_tiled),
    NodeDef(NodeSchema(
        name="VAEEncode", display_name="VAE Encode", category="latent",
        inputs=(inp("pixels", "IMAGE"), inp("vae", "VAE")), outputs=out("LATENT")), vae_encode),
    NodeDef(NodeSchema(
        name="VAEEncodeForInpaint", display_name="VAE Encode (for Inpainting)", category="latent/inpaint",
        inputs=(inp("pixels", "IMAGE"), inp("vae", "VAE"), inp("mask", "MASK"),
                inp("grow_mask_by", "INT", default=6, min=0, max=64, step=1)),
        outputs=out("LATENT")), vae_encode_for_inpaint),
)

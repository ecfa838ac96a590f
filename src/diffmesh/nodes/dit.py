"""Nodes of the diffusion-transformer families (Flux.1, Z-Image, Qwen-Image), with ComfyUI's schemas.

UNETLoader loads a bare transformer file from `diffusion_models/` (or the old `unet/`); the
ModelSampling* nodes put their flow-sampling arguments on the MODEL handle (`handle.sampling`),
which the graph side (sigmas) and the worker (denoiser) both read; FluxGuidance and
ConditioningZeroOut edit CONDITIONING lists; EmptySD3LatentImage makes 16-channel latents.
"""

from __future__ import annotations

import math

import torch

from diffmesh.models.handle import ModelHandle
from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out
from diffmesh.nodes.conditioning import set_values
from diffmesh.nodes.image import IMAGE_METHODS, common_upscale
from diffmesh.nodes.loaders import _family, _placement, device_input, folder_choices, resolve_model

MAX_RESOLUTION = 16384
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
# fp8_e4m3fn_fast only adds fp8 matrix multiplies on GPUs that have them; the weights are stored the same
STORAGE = {"default": None, "fp8_e4m3fn": "fp8_e4m3fn", "fp8_e4m3fn_fast": "fp8_e4m3fn", "fp8_e5m2": "fp8_e5m2"}
FLUX_SHIFT_X1, FLUX_SHIFT_X2 = 256, 4096        # token counts at which ModelSamplingFlux gives base / max shift


def load_unet(ctx: NodeContext, unet_name: str, weight_dtype: str, device: str = "default"):
    path = resolve_model(ctx, "diffusion_models", unet_name)
    return (ModelHandle(str(path), "unet", _family(path), dtype=STORAGE[weight_dtype], device=_placement(device)),)


def sampling_sd3(ctx: NodeContext, model: ModelHandle, shift: float, multiplier: float = 1000.0):
    return (model.with_options(sampling=("shift", float(shift), float(multiplier))),)


def sampling_aura_flow(ctx: NodeContext, model: ModelHandle, shift: float):
    return sampling_sd3(ctx, model, shift, 1.0)


def flux_mu(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """ModelSamplingFlux's mu: linear in the token count (W*H/256), base at 256 tokens, max at 4096."""
    slope = (max_shift - base_shift) / (FLUX_SHIFT_X2 - FLUX_SHIFT_X1)
    offset = base_shift - slope * FLUX_SHIFT_X1
    return (width * height / (8 * 8 * 2 * 2)) * slope + offset


def sampling_flux(ctx: NodeContext, model: ModelHandle, max_shift: float, base_shift: float, width: int, height: int):
    return (model.with_options(sampling=("flux", flux_mu(max_shift, base_shift, width, height), 1.0)),)


def flux_guidance(ctx: NodeContext, conditioning: list, guidance: float):
    return (set_values(conditioning, {"guidance": guidance}),)


def zero_out(ctx: NodeContext, conditioning: list):
    """Zeros of the same shapes: the negative of cfg-1 workflows (never evaluated at cfg 1)."""
    result = []
    for cond, options in conditioning:
        options = dict(options)
        for key in ("pooled_output", "conditioning_lyrics"):
            if options.get(key) is not None:
                options[key] = torch.zeros_like(options[key])
        result.append([torch.zeros_like(cond), options])
    return (result,)


def empty_sd3_latent(ctx: NodeContext, width: int, height: int, batch_size: int = 1):
    return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


def scale_to_total_pixels(ctx: NodeContext, image: torch.Tensor, upscale_method: str, megapixels: float,
                          resolution_steps: int = 1):
    samples = image.movedim(-1, 1)
    total = megapixels * 1024 * 1024
    scale_by = math.sqrt(total / (samples.shape[3] * samples.shape[2]))
    width = round(samples.shape[3] * scale_by / resolution_steps) * resolution_steps
    height = round(samples.shape[2] * scale_by / resolution_steps) * resolution_steps
    return (common_upscale(samples, width, height, upscale_method, "disabled").movedim(1, -1),)


SHIFT = dict(min=0.0, max=100.0, step=0.01)
ADVANCED = "comfy_extras.nodes_model_advanced"

NODES = (
    NodeDef(NodeSchema(
        name="UNETLoader", display_name="Load Diffusion Model", category="advanced/loaders",
        inputs=(combo("unet_name", folder_choices("diffusion_models")), combo("weight_dtype", WEIGHT_DTYPES),
                device_input()),
        outputs=out("MODEL")), load_unet),
    NodeDef(NodeSchema(
        name="ModelSamplingSD3", display_name="ModelSamplingSD3", category="advanced/model",
        inputs=(inp("model", "MODEL"), inp("shift", "FLOAT", default=3.0, **SHIFT)),
        outputs=out("MODEL"), python_module=ADVANCED), sampling_sd3),
    NodeDef(NodeSchema(
        name="ModelSamplingAuraFlow", display_name="ModelSamplingAuraFlow", category="advanced/model",
        inputs=(inp("model", "MODEL"), inp("shift", "FLOAT", default=1.73, **SHIFT)),
        outputs=out("MODEL"), python_module=ADVANCED), sampling_aura_flow),
    NodeDef(NodeSchema(
        name="ModelSamplingFlux", display_name="ModelSamplingFlux", category="advanced/model",
        inputs=(inp("model", "MODEL"), inp("max_shift", "FLOAT", default=1.15, **SHIFT),
                inp("base_shift", "FLOAT", default=0.5, **SHIFT),
                inp("width", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=8),
                inp("height", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=8)),
        outputs=out("MODEL"), python_module=ADVANCED), sampling_flux),
    NodeDef(NodeSchema(
        name="FluxGuidance", display_name="FluxGuidance", category="advanced/conditioning/flux",
        inputs=(inp("conditioning", "CONDITIONING"),
                inp("guidance", "FLOAT", default=3.5, min=0.0, max=100.0, step=0.1)),
        outputs=out("CONDITIONING"), python_module="comfy_extras.nodes_flux"), flux_guidance),
    NodeDef(NodeSchema(
        name="ConditioningZeroOut", display_name="ConditioningZeroOut", category="advanced/conditioning",
        inputs=(inp("conditioning", "CONDITIONING"),), outputs=out("CONDITIONING")), zero_out),
    NodeDef(NodeSchema(
        name="EmptySD3LatentImage", display_name="EmptySD3LatentImage", category="latent/sd3",
        inputs=(inp("width", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=16),
                inp("height", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=16),
                inp("batch_size", "INT", default=1, min=1, max=4096)),
        outputs=out("LATENT"), python_module="comfy_extras.nodes_sd3"), empty_sd3_latent),
    NodeDef(NodeSchema(
        name="ImageScaleToTotalPixels", display_name="Scale Image to Total Pixels", category="image/upscaling",
        inputs=(inp("image", "IMAGE"), combo("upscale_method", IMAGE_METHODS),
                inp("megapixels", "FLOAT", default=1.0, min=0.01, max=16.0, step=0.01),
                inp("resolution_steps", "INT", default=1, min=1, max=256)),
        outputs=out("IMAGE"), python_module="comfy_extras.nodes_post_processing"), scale_to_total_pixels),
)

"""Image conditioning nodes of ComfyUI's nodes.py: CLIP vision, style models, unCLIP.

CLIP_VISION is a `ModelHandle` (component "clip", family "clip_vision"): a worker builds the encoder
on the text encoders' device and `engine.encode_image` returns a `models.clip_vision.ClipVisionOutput`.
STYLE_MODEL is a `models.style_model.StyleModel` held where the graph runs (a few linear layers, run
on the CPU as ComfyUI does).
"""

from __future__ import annotations

import torch

from diffmesh.models.handle import ModelHandle
from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out
from diffmesh.nodes.loaders import folder_choices, load_checkpoint, resolve_model


def load_clip_vision(ctx: NodeContext, clip_name: str):
    path = resolve_model(ctx, "clip_vision", clip_name)
    return (ModelHandle(str(path), "clip", "clip_vision"),)


def encode_clip_vision(ctx: NodeContext, clip_vision: ModelHandle, image: torch.Tensor, crop: str):
    return (ctx.engine.encode_image(clip_vision, image, crop == "center"),)


def load_unclip_checkpoint(ctx: NodeContext, ckpt_name: str):
    """MODEL, CLIP, VAE of the checkpoint and its image encoder (`embedder.model.visual.*`)."""
    model, clip, vae = load_checkpoint(ctx, ckpt_name)
    return (model, clip, vae, ModelHandle(model.path, "clip", "clip_vision"))


def unclip_conditioning(ctx: NodeContext, conditioning: list, clip_vision_output, strength: float,
                        noise_augmentation: float):
    """Appends one entry to each conditioning's `unclip_conditioning` list (ComfyUI's append=True)."""
    if strength == 0:
        return (conditioning,)
    entry = {"clip_vision_output": clip_vision_output, "strength": strength, "noise_augmentation": noise_augmentation}
    result = []
    for cond, options in conditioning:
        options = dict(options)
        options["unclip_conditioning"] = list(options.get("unclip_conditioning") or []) + [entry]
        result.append([cond, options])
    return (result,)


def load_style(ctx: NodeContext, style_model_name: str):
    from diffmesh.models.style_model import load_style_model

    return (load_style_model(resolve_model(ctx, "style_models", style_model_name)),)


def _grown_mask(options: dict, n_txt: int, added: int, batch: int, bias: float) -> torch.Tensor:
    """The attention bias over [text, style tokens, reference image tokens] with the style tokens'
    columns set to `bias` (log of the strength) and the existing mask's quadrants kept."""
    ref_h, ref_w = options.get("attention_mask_img_shape", (1, 1))
    n_ref = ref_h * ref_w
    mask = options.get("attention_mask")
    if mask is None:
        mask = torch.zeros((batch, n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if mask.dtype == torch.bool:                    # True/False -> 0/-inf bias
        mask = torch.log(mask.to(dtype=torch.float16))
    size = n_txt + added + n_ref
    grown = torch.zeros((batch, size, size), dtype=torch.float16)
    tail = n_txt + added
    grown[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    grown[:, :n_txt, tail:] = mask[:, :n_txt, n_txt:]
    grown[:, tail:, :n_txt] = mask[:, n_txt:, :n_txt]
    grown[:, tail:, tail:] = mask[:, n_txt:, n_txt:]
    grown[:, :n_txt, n_txt:tail] = bias
    grown[:, tail:, n_txt:tail] = bias
    return grown


def apply_style_model(ctx: NodeContext, conditioning: list, style_model, clip_vision_output, strength: float,
                      strength_type: str):
    """Appends the style model's image tokens (all images' rows in one sequence) to every text
    conditioning; "multiply" scales them, "attn_bias" adds log(strength) to the attention towards them."""
    tokens = style_model.get_cond(clip_vision_output).flatten(start_dim=0, end_dim=1).unsqueeze(0)   # (1, B*N, D)
    if strength_type == "multiply":
        tokens = tokens * strength
    added = tokens.shape[1]
    result = []
    for cond, options in conditioning:
        options = dict(options)
        if "attention_mask" in options or (strength_type == "attn_bias" and strength != 1.0):
            # torch.log: log(0) is -inf (no attention at all), where math.log would raise
            bias = torch.log(torch.tensor([strength if strength_type == "attn_bias" else 1.0])).item()
            options["attention_mask"] = _grown_mask(options, cond.shape[1], added, cond.shape[0], bias)
            options["attention_mask_img_shape"] = options.get("attention_mask_img_shape", (1, 1))
        result.append([torch.cat((cond, tokens.to(cond.dtype).expand(cond.shape[0], -1, -1)), dim=1), options])
    return (result,)


NODES = (
    NodeDef(NodeSchema(
        name="CLIPVisionLoader", display_name="Load CLIP Vision", category="loaders",
        inputs=(combo("clip_name", folder_choices("clip_vision")),), outputs=out("CLIP_VISION")), load_clip_vision),
    NodeDef(NodeSchema(
        name="CLIPVisionEncode", display_name="CLIP Vision Encode", category="conditioning",
        inputs=(inp("clip_vision", "CLIP_VISION"), inp("image", "IMAGE"), combo("crop", ("center", "none"))),
        outputs=out("CLIP_VISION_OUTPUT")), encode_clip_vision),
    NodeDef(NodeSchema(
        name="StyleModelLoader", display_name="Load Style Model", category="loaders",
        inputs=(combo("style_model_name", folder_choices("style_models")),), outputs=out("STYLE_MODEL")),
        load_style),
    NodeDef(NodeSchema(
        name="StyleModelApply", display_name="Apply Style Model", category="conditioning/style_model",
        inputs=(inp("conditioning", "CONDITIONING"), inp("style_model", "STYLE_MODEL"),
                inp("clip_vision_output", "CLIP_VISION_OUTPUT"),
                inp("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.001),
                combo("strength_type", ("multiply", "attn_bias"))),
        outputs=out("CONDITIONING"), search_aliases=("style transfer",)), apply_style_model),
    NodeDef(NodeSchema(
        name="unCLIPCheckpointLoader", display_name="unCLIPCheckpointLoader", category="loaders",
        inputs=(combo("ckpt_name", folder_choices("checkpoints")),),
        outputs=out("MODEL", "CLIP", "VAE", "CLIP_VISION")), load_unclip_checkpoint),
    NodeDef(NodeSchema(
        name="unCLIPConditioning", display_name="unCLIPConditioning", category="conditioning",
        inputs=(inp("conditioning", "CONDITIONING"), inp("clip_vision_output", "CLIP_VISION_OUTPUT"),
                inp("strength", "FLOAT", default=1.0, min=-10.0, max=10.0, step=0.01),
                inp("noise_augmentation", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.01)),
        outputs=out("CONDITIONING")), unclip_conditioning),
)

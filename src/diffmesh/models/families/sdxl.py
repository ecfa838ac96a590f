"""SDXL: two text encoders whose penultimate layers (no final layer norm) are concatenated
(CLIP-L 768 + OpenCLIP bigG 1280 = 2048); pooled output from bigG's last layer through its
projection; the UNet also gets size conditioning (`time_ids`) through the ADM embedding.

time_ids = (height, width, crop_h, crop_w, target_height, target_width), each embedded with a
256-wide sinusoidal embedding and concatenated after the pooled vector, as ComfyUI's SDXL does."""

from __future__ import annotations

import torch

from diffmesh.models.families.common import FamilySpec, TextEncoderSpec
from diffmesh.models.families.sd1 import END_TOKEN

CLIP_L = TextEncoderSpec(
    name="clip_l", prefix="conditioner.embedders.0.transformer.", layout="hf", activation="quick_gelu",
    layer=-2, layer_norm_hidden=False, pad_token=END_TOKEN, lora_names=("lora_te1", "text_encoder"),
)
CLIP_G = TextEncoderSpec(
    name="clip_g", prefix="conditioner.embedders.1.model.", layout="open_clip", activation="gelu",
    layer=-2, layer_norm_hidden=False, pad_token=0, lora_names=("lora_te2", "text_encoder_2"),
)

FAMILY = FamilySpec(name="sdxl", prediction_type="eps", text_encoders=(CLIP_L, CLIP_G), pooled_from=1,
                    fixed_heads=None, sdxl_conditioning=True)

DEFAULT_SIZE = 768


def size_conditioning(options: dict, x_shape: tuple[int, ...]) -> torch.Tensor:
    """(1, 6) time_ids from a conditioning's options (ComfyUI keys).

    Like ComfyUI, width/height default to 768 when the conditioning does not carry them (plain
    CLIPTextEncode); the UNet embeds each value with a 256-wide sinusoidal embedding."""
    height = options.get("height", DEFAULT_SIZE)
    width = options.get("width", DEFAULT_SIZE)
    values = [height, width, options.get("crop_h", 0), options.get("crop_w", 0),
              options.get("target_height", height), options.get("target_width", width)]
    return torch.tensor([values], dtype=torch.float32)

"""The Wan 2.2 VAE (48 latent channels, 16x spatial, 4x temporal): original layout -> diffusers.

The Wan 2.2 TI2V 5B model's VAE (`wan2.2_vae.safetensors`) is a different network from Wan 2.1's:
pixels are patchified 2x2 into 12 channels before the encoder (and back after the decoder), the
residual stages add parameter-free average/duplicate shortcuts around each down/up stage, and the
decoder has its own base width. diffusers' `AutoencoderKLWan` runs it with `is_residual=True`,
`patch_size=2`, `in/out_channels=12`, `decoder_base_dim`; this module maps the original keys
(those of ComfyUI's `comfy/ldm/wan/vae2_2.py` and the Wan2.2 release) onto that model.

Layout facts (ComfyUI's structure, checked key by key against its module at a small width):
  - encoder.downsamples.S.downsamples.J.{residual.N, shortcut}: resnet J of down stage S; the last
    entry J of a stage that downsamples holds `resample.1` (and `time_conv` where time is halved);
  - decoder.upsamples.S.upsamples.J.{...}: the same for up stages, `resample.1`/`time_conv` last;
  - middle/head/conv1/conv2 as in Wan 2.1;
  - ComfyUI builds it with dim 160, decoder dim 256, z_dim 48, dim_mult (1, 2, 4, 4), two residual
    blocks per stage, temporal downsampling (False, True, True). The widths here are read from the
    file so that small test files load too.
"""

from __future__ import annotations

import functools
import re

import torch

MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"     # ComfyUI's Wan 2.2 VAE test
RES_BLOCKS = 2
DIM_MULT = [1, 2, 4, 4]
# residual block parts, original index -> diffusers name
RESIDUAL_PARTS = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight",
                  "residual.2.bias": "conv1.bias", "residual.3.gamma": "norm2.gamma",
                  "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
                  "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}
STAGE = re.compile(r"^(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.(downsamples|upsamples)\.(\d+)\.(.+)$")


def is_wan22_vae(keys) -> bool:
    return MARKER in set(keys)


def config(shapes: dict[str, tuple]) -> dict:
    """AutoencoderKLWan arguments from the shapes of an original-layout Wan 2.2 VAE."""
    temporal = [f"encoder.downsamples.{s}.downsamples.{RES_BLOCKS}.time_conv.weight" in shapes
                for s in range(len(DIM_MULT) - 1)]
    return config_for(shapes["encoder.conv1.weight"][0], shapes["decoder.head.0.gamma"][0],
                      shapes["conv2.weight"][0], temporal)


def config_for(dim: int, dec_dim: int, z_dim: int, temporal=(False, True, True)) -> dict:
    """AutoencoderKLWan arguments of a Wan 2.2 VAE of these widths (ComfyUI's: 160, 256, 48)."""
    return {"base_dim": dim, "decoder_base_dim": dec_dim, "z_dim": z_dim, "dim_mult": list(DIM_MULT),
            "num_res_blocks": RES_BLOCKS, "temperal_downsample": list(temporal), "is_residual": True,
            "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
            "scale_factor_temporal": 4}


def _stage_key(key: str) -> str | None:
    """encoder.downsamples.S.downsamples.J.* / decoder.upsamples.S.upsamples.J.* -> diffusers name."""
    m = STAGE.match(key)
    if m is None:
        return None
    part, _, stage, _, index, rest = m.groups()
    blocks = "down_blocks" if part == "encoder" else "up_blocks"
    if rest in RESIDUAL_PARTS:
        return f"{part}.{blocks}.{stage}.resnets.{index}.{RESIDUAL_PARTS[rest]}"
    sampler = "downsampler" if part == "encoder" else "upsampler"
    return f"{part}.{blocks}.{stage}.{sampler}.{rest}"              # resample.1.* / time_conv.*


def convert(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-layout state dict -> AutoencoderKLWan(is_residual=True) state dict (same tensors)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    staged = {}
    rest = {}
    for key, value in sd.items():
        new = _stage_key(key)
        if new is None:
            rest[key] = value
        else:
            staged[new] = value
    # the middle, head and quant convs have the Wan 2.1 names, which diffusers' converter maps
    out = convert_wan_vae_to_diffusers(rest)
    out.update(staged)
    return out


def original_key(diffusers_key: str) -> str:
    """Inverse of the key map (diffusers -> original layout), used to write test files."""
    m = re.match(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(.+)$", diffusers_key)
    if m is None:
        return _fixed_inverse().get(diffusers_key, diffusers_key)
    part, _, stage, rest = m.groups()
    outer = "downsamples" if part == "encoder" else "upsamples"
    r = re.match(r"^resnets\.(\d+)\.(.+)$", rest)
    if r is not None:
        inverse = {v: k for k, v in RESIDUAL_PARTS.items()}
        return f"{part}.{outer}.{stage}.{outer}.{r.group(1)}.{inverse[r.group(2)]}"
    sampler = rest.split(".", 1)                                    # downsampler|upsampler, tail
    # the sampler is the entry after the resnets: RES_BLOCKS in the encoder, RES_BLOCKS + 1 in the decoder
    index = RES_BLOCKS if part == "encoder" else RES_BLOCKS + 1
    return f"{part}.{outer}.{stage}.{outer}.{index}.{sampler[1]}"


@functools.cache
def _fixed_inverse() -> dict[str, str]:
    names = {"conv1": "quant_conv", "conv2": "post_quant_conv", "encoder.conv1": "encoder.conv_in",
             "decoder.conv1": "decoder.conv_in", "encoder.head.0": "encoder.norm_out",
             "encoder.head.2": "encoder.conv_out", "decoder.head.0": "decoder.norm_out",
             "decoder.head.2": "decoder.conv_out"}
    out = {}
    for ours, theirs in names.items():
        for leaf in ("weight", "bias", "gamma"):
            out[f"{theirs}.{leaf}"] = f"{ours}.{leaf}"
    for part in ("encoder", "decoder"):
        for i, orig in ((0, 0), (1, 2)):
            for o, d in RESIDUAL_PARTS.items():
                out[f"{part}.mid_block.resnets.{i}.{d}"] = f"{part}.middle.{orig}.{o}"
        for leaf in ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias"):
            out[f"{part}.mid_block.attentions.0.{leaf}"] = f"{part}.middle.1.{leaf}"
    return out


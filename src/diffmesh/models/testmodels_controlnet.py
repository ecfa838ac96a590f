"""Random-weight ControlNet files for tests, in ComfyUI's cldm layout and in diffusers' layout.

The cldm file has the key names and shapes ComfyUI's `cldm.ControlNet` would save for the tiny SD1
UNet of `testmodels` (same channels, depths and context width): its input and middle blocks, the
hint block (16, 16, 32, 32, 96, 96, 256 channels, fixed in cldm), one 1x1 zero conv per input
block and `middle_block_out`. The zero convs get random weights here (real files start at zero
and learn), so a test ControlNet has a visible effect.
"""

from __future__ import annotations

import os

import torch

from diffmesh.models import testspecs as ts
from diffmesh.models.testmodels import SDXL_TIME_EMBED, TINY_CLIP_L, TINY_OPEN_CLIP, TINY_UNET

HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)


def _unet(family: str) -> ts.Spec:
    unet = ts.Spec()
    if family == "sdxl":        # the tiny SDXL UNet of testmodels: no attention at level 0, ADM embedding
        ts.unet_spec(unet, "", attention_levels=(0, 1), context_dim=TINY_CLIP_L["hidden"] + TINY_OPEN_CLIP["width"],
                     linear_proj=True, adm_in_channels=6 * SDXL_TIME_EMBED + TINY_OPEN_CLIP["proj_dim"],
                     **dict(TINY_UNET, transformer_depth=(0, 2)))
    else:
        ts.unet_spec(unet, "", attention_levels=(0, 1), context_dim=TINY_CLIP_L["hidden"], **TINY_UNET)
    return unet


def cldm_spec(prefix: str = "", hint_channels: int = 3, family: str = "sd1") -> ts.Spec:
    """Tiny SD1 / SDXL ControlNet keys (cldm layout) under `prefix` ("" or "control_model.")."""
    unet = _unet(family)
    s = ts.Spec()
    for key, item in unet.items.items():
        if key.startswith(("time_embed.", "label_emb.", "input_blocks.", "middle_block.")):
            s.items[prefix + key] = item
    cin = hint_channels
    for i, cout in enumerate(HINT_CHANNELS):
        s.conv(f"{prefix}input_hint_block.{2 * i}", cout, cin, 3)
        cin = cout
    s.conv(f"{prefix}input_hint_block.14", TINY_UNET["model_channels"], cin, 3)
    n_inputs = 1 + max(int(k.split(".")[1]) for k in unet.items if k.startswith("input_blocks."))
    for i in range(n_inputs):
        channels = unet.items[f"input_blocks.{i}.0.weight" if i == 0 else _block_out_key(unet, i)][0][0]
        s.conv(f"{prefix}zero_convs.{i}.0", channels, channels, 1)
    mid = unet.items["middle_block.2.out_layers.3.weight"][0][0]
    s.conv(f"{prefix}middle_block_out.0", mid, mid, 1)
    return s


def _block_out_key(unet: ts.Spec, i: int) -> str:
    for suffix in (".0.out_layers.3.weight", ".0.op.weight"):
        if f"input_blocks.{i}{suffix}" in unet.items:
            return f"input_blocks.{i}{suffix}"
    raise KeyError(i)


def cldm_state_dict(seed: int = 31, prefix: str = "", family: str = "sd1") -> dict[str, torch.Tensor]:
    return ts.materialize(cldm_spec(prefix, family=family), seed, torch.float32)


def diffusers_state_dict(seed: int = 32) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel of the tiny SD1 shapes, randomly initialised (torch's default init)."""
    from diffusers import ControlNetModel

    mc = TINY_UNET["model_channels"]
    config = dict(in_channels=4, conditioning_channels=3, block_out_channels=[mc * m for m in TINY_UNET["channel_mult"]],
                  down_block_types=["CrossAttnDownBlock2D"] * len(TINY_UNET["channel_mult"]),
                  layers_per_block=TINY_UNET["num_res_blocks"], cross_attention_dim=TINY_CLIP_L["hidden"],
                  attention_head_dim=8, norm_num_groups=32)
    torch.manual_seed(seed)
    net = ControlNetModel(**config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():     # diffusers zero-initialises the output convs: give them values
        for module in list(net.controlnet_down_blocks) + [net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.1)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def write(path: str | os.PathLike, layout: str = "cldm", seed: int | None = None, extra: dict | None = None,
          family: str = "sd1") -> str:
    """Write a tiny ControlNet: layout "cldm", "cldm_pth" (under `control_model.`) or "diffusers" (SD1 only)."""
    if layout == "diffusers":
        sd = diffusers_state_dict(32 if seed is None else seed)
    else:
        sd = cldm_state_dict(31 if seed is None else seed, "control_model." if layout == "cldm_pth" else "", family)
    sd.update(extra or {})
    ts.save_safetensors_deterministic(sd, str(path), {"note": "random weights, NOT a trained model"})
    return str(path)


# ---------------------------------- T2I-adapters --------------------------------------------------

def adapter_spec(channels: int = 32, image_channels: int = 3, ksize: int = 1, xl: bool = False) -> ts.Spec:
    """A full T2I-adapter in ComfyUI's layout: conv_in after a pixel unshuffle (8x SD1, 16x SDXL), two
    residual blocks per level at (c, 2c, 4c, 4c); a block that changes the width starts with in_conv."""
    s = ts.Spec()
    cin = image_channels * (16 if xl else 8) ** 2
    widths = [channels, channels * 2, channels * 4, channels * 4]
    s.conv("conv_in", channels, cin, 3)
    for level, width in enumerate(widths):
        for j in range(2):
            k = 2 * level + j
            if j == 0 and level > 0 and widths[level - 1] != width:
                s.conv(f"body.{k}.in_conv", width, widths[level - 1], ksize)
            s.conv(f"body.{k}.block1", width, width, 3)
            s.conv(f"body.{k}.block2", width, width, ksize)
    return s


def adapter_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI adapter keys -> diffusers' `adapter.body.I.resnets.J.` / `adapter.body.I.in_conv` layout."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "body":
            k = int(parts[1])
            if parts[2] == "in_conv":
                key = ".".join(["body", str(k // 2), "in_conv"] + parts[3:])
            else:
                key = ".".join(["body", str(k // 2), "resnets", str(k % 2)] + parts[2:])
        out["adapter." + key] = value
    return out


def write_adapter(path: str | os.PathLike, layout: str = "comfy", seed: int = 41, xl: bool = False) -> str:
    sd = ts.materialize(adapter_spec(xl=xl), seed, torch.float32)
    if layout == "diffusers":
        sd = adapter_to_diffusers(sd)
    ts.save_safetensors_deterministic(sd, str(path), {"note": "random weights, NOT a trained model"})
    return str(path)


def write_sd1_two_resblocks(path: str | os.PathLike, seed: int = 0) -> str:
    """A tiny SD1 checkpoint with two res blocks per level, like the real SD1 UNet: T2I-adapter features
    land after input blocks 2 and 5 (the last res block of levels 0 and 1), which need that layout."""
    from diffmesh.models.testmodels import TINY_VAE

    s = ts.Spec()
    ts.unet_spec(s, "model.diffusion_model.", attention_levels=(0, 1), context_dim=TINY_CLIP_L["hidden"],
                 **dict(TINY_UNET, num_res_blocks=2))
    ts.vae_spec(s, "first_stage_model.", **TINY_VAE)
    ts.clip_spec(s, "cond_stage_model.transformer.", **TINY_CLIP_L)
    ts.save_safetensors_deterministic(ts.materialize(s, seed, torch.float32), str(path),
                                      {"note": "random weights, NOT a trained model"})
    return str(path)

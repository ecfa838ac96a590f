"""A random-weight SD1.x inpainting checkpoint for tests: the tiny SD1 checkpoint of
`models.testmodels` with the UNet's first convolution taking 9 channels (4 latent + 1 mask + 4
masked-image latent), which is how ComfyUI and diffmesh tell an inpainting model."""

from __future__ import annotations

import os

import torch

from diffmesh.models import testspecs as ts
from diffmesh.models.testmodels import TINY_CLIP_L, TINY_UNET, TINY_VAE

INPAINT_IN_CHANNELS = 9


def sd1_inpaint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    s = ts.Spec()
    ts.unet_spec(s, "model.diffusion_model.", attention_levels=(0, 1), context_dim=TINY_CLIP_L["hidden"],
                 in_channels=INPAINT_IN_CHANNELS, **TINY_UNET)
    ts.vae_spec(s, "first_stage_model.", **TINY_VAE)
    ts.clip_spec(s, "cond_stage_model.transformer.", **TINY_CLIP_L)
    return ts.materialize(s, seed, torch.float32)


def _write(state: dict[str, torch.Tensor], out_path: str | os.PathLike, family: str, seed: int) -> str:
    out = str(out_path)
    meta = {"format": "pt", "generator": "diffmesh.models.testmodels_inpaint", "family": family, "size": "tiny",
            "seed": str(seed), "note": "random weights, NOT a trained model"}
    ts.save_safetensors_deterministic(state, out, meta)
    return out


def write_sd1_inpaint(out_path: str | os.PathLike, seed: int = 0) -> str:
    return _write(sd1_inpaint_state_dict(seed), out_path, "sd1", seed)


def flux_fill_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny Flux.1-dev of `models.dit.testfiles` with Flux Fill's input: img_in takes
    (16 latent + 16 masked-image latent + 64 mask) channels x 2 x 2 patches, the output stays 16 x 2 x 2."""
    from diffmesh.models.dit.testfiles import TINY_FLUX, flux_spec

    s = flux_spec(ts.Spec(), TINY_FLUX)
    s.linear("img_in", TINY_FLUX["hidden"], (16 + 16 + 64) * TINY_FLUX["patch"] ** 2)
    return ts.materialize(s, seed, torch.float32)


def write_flux_fill(out_path: str | os.PathLike, seed: int = 0) -> str:
    return _write(flux_fill_state_dict(seed), out_path, "flux-fill", seed)

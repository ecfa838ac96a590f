"""Wan 2.2 TI2V 5B: the Wan network on the 48-channel Wan 2.2 VAE latent, with per-frame timesteps.

The 5B file has the Wan 2.1 layout (`models.dit.wan`: same blocks, keys and detection) with
in_dim = out_dim = 48 and dim 3072 (24 heads of 128), 30 blocks. ComfyUI runs it as WAN22_T2V /
model_base.WAN22: latent format Wan22 (48 channels, per-channel mean/std, 16x spatial), default
shift 8 like Wan 2.1, and two image-to-video facts this family keeps:
  - the inpaint mask of the latent (Wan22ImageToVideoLatent's noise_mask, 0 on the start frame)
    reaches the model, which gives each latent frame the timestep t * mean(mask of that frame), so
    a given first frame is seen at t = 0 (`wan.frame_timesteps`);
  - the known part of the latent is kept as it is at every step (scale_latent_inpaint returns the
    latent, not noise_scaling of it): `DiTModel.mask_sets_timestep` tells the denoiser.
There is no concat channel (in_dim equals the latent width) and no CLIP-vision input.

The Wan 2.2 14B T2V/I2V experts (high noise, low noise) are two Wan 2.1-layout files of 16 channels:
family `wan21`; workflows chain them with two KSamplerAdvanced nodes.
"""

from __future__ import annotations

from diffmesh.models.dit import DiTFamily
from diffmesh.models.dit import wan


def matches(shapes: dict[str, tuple]) -> bool:
    return wan.is_wan(shapes) and wan.out_channels(shapes) == wan.WAN22_CHANNELS


def describe(cfg: dict) -> str:
    return f"Wan 2.2 TI2V (48-channel latent), width {cfg['dim']}, {cfg['num_heads']} heads, {cfg['num_layers']} blocks"


FAMILY = DiTFamily(
    name="wan22",
    matches=matches,
    config=wan.config,
    convert=dict,
    build=wan.WanTransformer,
    latent_format="wan22",
    sampling=("shift", 8.0, 1000.0),    # WAN22_T2V keeps WAN21_T2V's sampling settings
    extra_conds=wan.extra_conds,
    describe=describe,
    lora_names=wan.lora_names,
)

"""The interfaces a materialized model component offers to the rest of diffmesh.

`diffmesh.models.load.build_component(handle, device, dtype)` returns one of these. Sampling code
(`diffmesh.sampling`) only sees `DiffusionModel`; nodes never see any of them (they hold handles).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class DiffusionModel(Protocol):
    """A denoising network with the facts sampling needs about it.

    model_sampling: `diffmesh.sampling.model_sampling.ModelSampling` (prediction type, sigma table)
    latent_format:  `diffmesh.sampling.latent_formats.LatentFormat` (scale factor, channels, preview factors)
    """

    model_sampling: Any
    latent_format: Any
    device: torch.device
    dtype: torch.dtype

    def extra_conds(self, options: dict[str, Any], x_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Per-sample extra inputs from a conditioning's options dict (SDXL: text_embeds, time_ids).

        Returned tensors have batch dimension 1 (or x_shape[0]); sampling concatenates them
        along dim 0 exactly like x when it batches cond and uncond into one call."""
        ...

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                 **extra: torch.Tensor) -> torch.Tensor:
        """Raw network output (eps or v) for scaled input x (B,C,H,W), float timesteps (B,),
        cross-attention context (B,T,D). Inputs/outputs float32; casting is the model's job."""
        ...


class TextEncoder(Protocol):
    def encode(self, text: str) -> list:
        """ComfyUI CONDITIONING: [[cond (1, 77*k, D), {"pooled_output": (1, P), ...}]]."""
        ...


class VAEModel(Protocol):
    latent_channels: int
    downscale: int

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B,4,h,w) -> images (B, 8h, 8w, 3) float32 in [0, 1] on CPU."""
        ...

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (B,H,W,C) in [0,1] -> unscaled latent mean (B,4,H/8,W/8) float32 on CPU."""
        ...

    def decode_tiled(self, samples: torch.Tensor, tile_size: int, overlap: int) -> torch.Tensor:
        ...

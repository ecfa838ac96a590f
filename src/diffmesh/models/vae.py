"""VAE decode / encode / tiled decode with ComfyUI's conventions (spec §6.9, §4.4 VAEDecodeTiled).

Latents here are unscaled (no 0.18215 factor): scaling belongs to sampling. Encode returns the
mean of the posterior, never a sample, so it is deterministic.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from diffmesh.models.component import DeviceAndDtype
from diffmesh.models.vae_tiles import TilePlan, blend, make_plan, run_jobs


def feathered_tiles(samples: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile: tuple[int, int],
                    overlap: int, scale: int, out_channels: int) -> torch.Tensor:
    """Run `fn` over overlapping (tile_h, tile_w) latent tiles and blend them with linear feathering
    (one pass of `models.vae_tiles`): (B,C,h,w) -> (B,out_channels,h*scale,w*scale). A sample that
    fits in one tile is decoded whole, which keeps small images identical to a plain decode."""
    plan = TilePlan(tuple(samples.shape), (tuple(tile),), overlap, scale, out_channels)
    return blend(plan, dict(enumerate(run_jobs(fn, samples, plan.jobs()))))


def finish_decode(out: torch.Tensor) -> torch.Tensor:
    """Decoder output (B,3,H,W) in [-1, 1]-ish -> images (B,H,W,3) in [0, 1]."""
    return ((out + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def crop_to_multiple(pixels: torch.Tensor, d: int) -> torch.Tensor:
    """Images (B,H,W,C) centre-cropped to multiples of `d` (the downscale factor), as ComfyUI encodes."""
    h, w = pixels.shape[1], pixels.shape[2]
    hh, ww = (h // d) * d, (w // d) * d
    if (hh, ww) == (h, w):
        return pixels
    y0, x0 = (h % d) // 2, (w % d) // 2
    return pixels[:, y0:y0 + hh, x0:x0 + ww, :]


class VAE(DeviceAndDtype, nn.Module):
    """Wraps a diffusers AutoencoderKL built from an original-layout VAE."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        cfg = autoencoder.config
        self.latent_channels = int(cfg.latent_channels)
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """(B,4,h,w) unscaled -> decoder output in [-1, 1]-ish, float32 on CPU."""
        z = z.to(self.device, self.dtype)
        return self.autoencoder.decode(z).sample.float().cpu()

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B,4,h,w) -> images (B, 8h, 8w, 3) float32 in [0, 1] on CPU."""
        return finish_decode(self._decode_raw(samples))

    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1, 1] -> unscaled latent mean, float32 on CPU."""
        return self.autoencoder.encode(x.to(self.device, self.dtype)).latent_dist.mean.float().cpu()

    @staticmethod
    def _encoder_input(pixels: torch.Tensor) -> torch.Tensor:
        return pixels[..., :3].movedim(-1, 1).float() * 2.0 - 1.0            # (B,3,H,W) in [-1, 1]

    def tile_plan(self, shape: tuple[int, ...], tile_size: int = 512, overlap: int = 64,
                  encode: bool = False) -> TilePlan:
        """VAEDecodeTiled / VAEEncodeTiled tiles; tile_size and overlap in image pixels, as the nodes take
        them. `shape`: the latent (B,C,h,w) to decode, or the images (B,H,W,C) to encode."""
        d = self.downscale
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        if encode:
            b, h, w = shape[0], shape[1] // d * d, shape[2] // d * d
            return make_plan((b, 3, h, w), tile_size, overlap, 1.0 / d, self.latent_channels, encode=True)
        return make_plan(tuple(shape), tile_size // d, overlap // d, d, 3, encode=False)

    @torch.no_grad()
    def run_tiles(self, tensor: torch.Tensor, jobs: list, encode: bool = False) -> list[torch.Tensor]:
        """The pieces of `jobs` (from `tile_plan(...).jobs()`): raw decoder outputs or latents."""
        if encode:
            return run_jobs(self._encode_raw, self._encoder_input(self.crop_to_scale(tensor)), jobs)
        return run_jobs(self._decode_raw, tensor, jobs)

    @torch.no_grad()
    def decode_tiled(self, samples: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
        """VAEDecodeTiled (see `models.vae_tiles` for ComfyUI's three averaged tilings)."""
        plan = self.tile_plan(samples.shape, tile_size, overlap)
        return finish_decode(blend(plan, dict(enumerate(self.run_tiles(samples, plan.jobs())))))

    @torch.no_grad()
    def encode_tiled(self, pixels: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
        """VAEEncodeTiled: images (B,H,W,C) -> unscaled latent mean, tiled as ComfyUI's encode_tiled_."""
        plan = self.tile_plan(pixels.shape, tile_size, overlap, encode=True)
        return blend(plan, dict(enumerate(self.run_tiles(pixels, plan.jobs(), encode=True))))

    def crop_to_scale(self, pixels: torch.Tensor) -> torch.Tensor:
        return crop_to_multiple(pixels, self.downscale)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (B,H,W,C) in [0,1] -> unscaled latent mean (B,4,H/8,W/8) float32 on CPU."""
        return self._encode_raw(self._encoder_input(self.crop_to_scale(pixels)))

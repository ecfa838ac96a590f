"""VAE decode / encode / tiled decode with ComfyUI's conventions (spec §6.9, §4.4 VAEDecodeTiled).

Latents here are unscaled (no 0.18215 factor): scaling belongs to sampling. Encode returns the
mean of the posterior, never a sample, so it is deterministic.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import nn

from diffmesh.models.component import DeviceAndDtype


def feathered_tiles(samples: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile: tuple[int, int],
                    overlap: int, scale: int, out_channels: int) -> torch.Tensor:
    """Run `fn` over overlapping (tile_h, tile_w) latent tiles and blend them with linear feathering.

    (B,C,h,w) -> (B,out_channels,h*scale,w*scale). A sample that fits in one tile is decoded whole,
    which keeps small images identical to a plain decode. Tile starts step by tile - overlap and are
    clamped so the last tile ends at the border; overlapping pixels are weighted by ramps of
    `overlap*scale` pixels at each tile edge."""
    b, _, h, w = samples.shape
    out = torch.empty((b, out_channels, h * scale, w * scale), dtype=torch.float32)
    size = (h, w)
    for i in range(b):
        s = samples[i:i + 1]
        if h <= tile[0] and w <= tile[1]:
            out[i:i + 1] = fn(s).float().cpu()
            continue
        acc = torch.zeros((1, out_channels, h * scale, w * scale), dtype=torch.float32)
        weight = torch.zeros_like(acc)
        starts = [range(0, size[d] - overlap, tile[d] - overlap) if size[d] > tile[d] else [0] for d in range(2)]
        for pos in itertools.product(*starts):
            y0 = max(0, min(h - overlap, pos[0]))
            x0 = max(0, min(w - overlap, pos[1]))
            th, tw = min(tile[0], h - y0), min(tile[1], w - x0)
            piece = fn(s[:, :, y0:y0 + th, x0:x0 + tw]).float().cpu()          # (1, C, th*scale, tw*scale)
            mask = torch.ones_like(piece)
            feather = overlap * scale
            for dim in (2, 3):
                if feather >= mask.shape[dim]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(dim, t, 1).mul_(a)
                    mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_(a)
            ys, xs = y0 * scale, x0 * scale
            acc[:, :, ys:ys + piece.shape[2], xs:xs + piece.shape[3]] += piece * mask
            weight[:, :, ys:ys + piece.shape[2], xs:xs + piece.shape[3]] += mask
        out[i:i + 1] = acc / weight
    return out


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
        out = self._decode_raw(samples)
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def decode_tiled(self, samples: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
        """VAEDecodeTiled: tile_size and overlap in pixels, as the node takes them.

        Three tilings — (t/2 x 2t), (2t x t/2), (t x t) latent pixels — are averaged so tile seams
        of one tiling fall inside tiles of the others."""
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        t, ov, sc = tile_size // self.downscale, overlap // self.downscale, self.downscale
        total = None
        for tile in ((t * 2, t // 2), (t // 2, t * 2), (t, t)):            # (tile_h, tile_w)
            part = feathered_tiles(samples, self._decode_raw, tile, ov, sc, 3)
            total = part if total is None else total + part
        out = total / 3.0
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (B,H,W,C) in [0,1] -> unscaled latent mean (B,4,H/8,W/8) float32 on CPU."""
        d = self.downscale
        h, w = pixels.shape[1], pixels.shape[2]
        hh, ww = (h // d) * d, (w // d) * d
        if (hh, ww) != (h, w):
            y0, x0 = (h % d) // 2, (w % d) // 2                              # centered crop
            pixels = pixels[:, y0:y0 + hh, x0:x0 + ww, :]
        x = pixels[..., :3].movedim(-1, 1).to(self.device, self.dtype) * 2.0 - 1.0   # (B,3,H,W)
        return self.autoencoder.encode(x).latent_dist.mean.float().cpu()

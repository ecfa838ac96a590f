"""Exact patch parallel for the Wan video VAE (Wan 2.1, Wan 2.2, Qwen-Image): its layers that need
rows of the neighbouring bands, on top of `parallel.patch`'s 2-D convolutions.

The video VAE (diffusers' AutoencoderKLWan) is split over image rows, never over frames: its causal
caches carry every chunk's last frames into the next chunk, so frames depend on all earlier ones and
only a serial walk over time gives the same numbers. Split in rows, each worker walks all frames of
its band with its own caches (a band's cache is the band of the whole cache), and:
  - `WanCausalConv3d` with a kernel taller than one row (3x3x3, 1x3x3...): `HaloCausalConv3d` takes
    the causal cache frames first, exactly as the layer does, then the halo rows of that time-extended
    input from the neighbours, then the layer's own width and time padding;
  - the 2-D convolutions of the up/down samplers run per frame as `HaloConv2d` (`parallel.patch`),
    the encoder's hand-padded stride-2 convolution included (its ZeroPad2d bottom row taken back);
  - `WanAttentionBlock` (one head over each frame's pixels, in the middle blocks) becomes
    `BandWanAttention`: queries of the band's pixels, keys and values of every band's (all-gathered);
  - RMS norms normalise each pixel over its channels, pixel shuffles (Wan 2.2's patchify, AvgDown3D,
    DupUp3D) stay within whole rows of a band, time convolutions (kernel one row tall) see their own
    rows: none needs an exchange.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class HaloCausalConv3d(nn.Module):
    """A WanCausalConv3d on a band of rows: called as the layer is, `(x, cache_x=None)`."""

    def __init__(self, conv: nn.Conv3d, shard: Any):
        super().__init__()
        if conv.stride[1] != 1 or conv.dilation[1] != 1:
            raise ValueError("patch parallel splits Wan causal convolutions with row stride 1 only")
        self.conv, self.shard = conv, shard
        self.rows = conv._padding[2]                      # (w, w, h, h, 2t, 0): h rows each side

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        conv = self.conv
        padding = list(conv._padding)
        if cache_x is not None and padding[4] > 0:        # the causal cache replaces time padding
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            padding[4] -= cache_x.shape[2]
        above, below = self.shard.halo_rows(x, self.rows, self.rows)
        # one padded copy, as the layer's own F.pad makes: width and time padding zeros, the halo rows
        # from the neighbours (zeros at the image's top and bottom)
        b, c, t, h, w = x.shape
        r, left, front = self.rows, padding[0], padding[4]
        padded = x.new_zeros((b, c, front + t, h + 2 * r, w + padding[0] + padding[1]))
        padded[:, :, front:, r:r + h, left:left + w] = x
        if above is not None:
            padded[:, :, front:, :r, left:left + w] = above
        if below is not None:
            padded[:, :, front:, r + h:, left:left + w] = below
        return nn.Conv3d.forward(conv, padded)            # the layer's own padding attribute is (0, 0, 0)


class BandWanAttention(nn.Module):
    """WanAttentionBlock on a band: the same computation, keys and values gathered from every band."""

    def __init__(self, block: nn.Module, shard: Any):
        super().__init__()
        self.block, self.shard = block, shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        b, c, t, h, w = x.shape
        frames = block.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        qkv = block.to_qkv(frames).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        k, v = (self.shard.gather_tokens(part.squeeze(1)).unsqueeze(1) for part in (k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = block.proj(out.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        return out.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + x


def wan_swaps(root: nn.Module, shard: Any) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, child name, original, wrapper) for the Wan-specific layers of `root` (see the module doc)."""
    out = []
    for parent in root.modules():
        for name, child in parent.named_children():
            kind = type(child).__name__
            if kind == "WanCausalConv3d" and child._padding[2] > 0:
                out.append((parent, name, child, HaloCausalConv3d(child, shard)))
            elif kind == "WanAttentionBlock":
                out.append((parent, name, child, BandWanAttention(child, shard)))
    return out


def hand_padded(parent: nn.Module, name: str) -> bool:
    """True for the Conv2d after a ZeroPad2d((0, 1, 0, 1)) in an nn.Sequential (the Wan encoder's
    stride-2 downsampling pads its bottom row and right column itself)."""
    if not isinstance(parent, nn.Sequential):
        return False
    names = list(parent._modules)
    at = names.index(name)
    before = parent._modules[names[at - 1]] if at else None
    return isinstance(before, nn.ZeroPad2d) and tuple(before.padding) == (0, 1, 0, 1)

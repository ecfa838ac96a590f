"""Multi-axis rotary position embedding (RoPE) as ComfyUI computes it for Flux, Z-Image and Qwen-Image.

Each token has one position per axis (e.g. (caption index, row, col)); each axis owns a slice of
the head dimension, and inside a slice elements 2k and 2k+1 rotate together by the angle
position * theta^(-2k/d). The angles are formed in float64 (float32 positions times float64
frequencies) and only cos/sin are rounded to float32: a float32 angle is off by up to ~1.5e-5 rad
at positions in the hundreds (long captions), which alone moves a transformer's output by more
than the 1e-5 parity tolerance.
"""

from __future__ import annotations

import torch

from diffmesh.models.dit.sequence import WHOLE


def rope_table(ids: torch.Tensor, axes_dims: tuple[int, ...] | list[int], theta: float) -> torch.Tensor:
    """Positions (B, L, n_axes) -> (B, L, sum(axes_dims) // 2, 2) float32 table of (cos, sin)."""
    parts = []
    for axis, dim in enumerate(axes_dims):
        # theta^(-2k/d) for k < d/2, in float64
        exponent = torch.linspace(0.0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=ids.device)
        freqs = 1.0 / (theta ** exponent)
        angles = ids[..., axis].to(torch.float32).to(torch.float64).unsqueeze(-1) * freqs   # (B, L, d/2)
        parts.append(torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1))
    return torch.cat(parts, dim=-2).to(torch.float32)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, L, H, D) by table (B, L, D/2, 2); computed in float32, returned in x's dtype."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)                # (B, L, H, D/2, 2)
    cos = table[..., 0].unsqueeze(2)                                # (B, L, 1, D/2)
    sin = table[..., 1].unsqueeze(2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack((cos * even - sin * odd, sin * even + cos * odd), dim=-1)
    return out.reshape(x.shape).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq=WHOLE, replicated: int = 0) -> torch.Tensor:
    """Full (unmasked) softmax attention: q, k, v (B, L, H, D) -> (B, L, H*D). With sequence parallel
    (`seq`, models.dit.sequence) the rows are the first `replicated` text rows and this worker's image rows."""
    out = seq.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), replicated)
    return out.transpose(1, 2).flatten(2)

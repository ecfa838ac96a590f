"""Patch-parallel layers without worker processes: bands of rows on threads joined by a real gloo
group, each running HaloConv2d / GlobalGroupNorm on its band; the bands, put back together, must be
one device's convolution / GroupNorm. Bands tall enough take the fast path (the band convolved with
its own padding, edge rows recomputed from halo slabs), short ones the padded-copy path."""

from __future__ import annotations

import pytest
import torch
from group_threads import run_group
from torch import nn

from diffmesh.parallel.patch import GlobalGroupNorm, HaloConv2d, PatchShard


def _bands(world: int, x: torch.Tensor, align: int, layer) -> list[torch.Tensor]:
    """layer(shard) applied on each rank's band of `x` (rows split as the engine splits them)."""
    def member(rank: int, group) -> torch.Tensor:
        shard = PatchShard(group, rank, world)
        with torch.no_grad():
            return layer(shard)(shard.split(x, align))
    return run_group(world, member)


CONVS = {   # kernel, stride, padding, dilation: the UNet's and VAE's convolutions, and wider ones
    "3x3": (3, 1, 1, 1), "3x3 stride 2": (3, 2, 1, 1), "5x5": (5, 1, 2, 1), "3x3 dilated": (3, 1, 2, 2),
    "4x4 stride 2": (4, 2, 1, 1),
}


@pytest.mark.parametrize("rows", [40, 12])                  # tall bands (fast path) and short ones
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(CONVS))
def test_halo_convolution_bands_equal_one_convolution(name, world, rows):
    k, s, p, d = CONVS[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, k, stride=s, padding=(p, 1), dilation=d)
    x = torch.randn(2, 5, rows, 9)
    with torch.no_grad():
        expected = conv(x)
    bands = _bands(world, x, 2 * s, lambda shard: HaloConv2d(conv, shard))
    got = torch.cat(bands, dim=-2)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shape", [(2, 8, 40, 9), (1, 8, 12, 5, 6)])      # images, and video-like 5-D
def test_global_group_norm_bands_equal_one_group_norm(world, shape):
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8, eps=1e-6)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(shape) * 3.0 + 2.0
    with torch.no_grad():
        expected = norm(x)
    bands = _bands(world, x, 1, lambda shard: GlobalGroupNorm(norm, shard))
    got = torch.cat(bands, dim=-2)
    assert (got - expected).abs().max().item() < 1e-5


def test_global_group_norm_of_half_precision_takes_the_generic_path():
    norm = nn.GroupNorm(2, 4).to(torch.bfloat16)
    x = torch.randn(1, 4, 16, 6, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = norm(x).float()
    got = torch.cat(_bands(2, x, 1, lambda shard: GlobalGroupNorm(norm, shard)), dim=-2).float()
    assert (got - expected).abs().max().item() < 0.05

"""The Wan video VAE split in bands of rows (`parallel.patch_wan`): on threads joined by a real gloo
group, each decoding / encoding its band with the causal caches of its own rows, the bands put
together equal one device's decode and encode (tiny Wan 2.1 and Wan 2.2 VAEs, 2 and 3 bands,
several latent frames so the caches are used)."""

from __future__ import annotations

import copy

import pytest
import torch
from group_threads import run_group

from diffmesh.models import testmodels_dit
from diffmesh.models.vae_wan import build_wan_vae
from diffmesh.parallel.patch import PatchShard, decode_band, encode_band


@pytest.fixture(scope="module", params=["wan21vae", "wan22vae"])
def vae(request):
    return build_wan_vae(testmodels_dit.state_dict(request.param, "tiny"), "cpu", torch.float32)


def _on_bands(world: int, vae, fn) -> list[torch.Tensor]:
    """fn(own copy of the VAE, shard) per rank: each thread puts its band wrappers on its own copy."""
    copies = [copy.deepcopy(vae) for _ in range(world)]
    return run_group(world, lambda rank, group: fn(copies[rank], PatchShard(group, rank, world)))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("world", [2, 3])
def test_wan_vae_decode_in_bands_equals_one_device(vae, world):
    """3 latent frames (9 video frames: the causal caches carry rows of every chunk), 11 latent rows:
    bands of 6/5 or 4/4/3 rows."""
    z = torch.randn(1, vae.latent_channels, 3, 11, 4, generator=torch.Generator().manual_seed(0))
    expected = vae.decode(z)
    bands = _on_bands(world, vae, lambda own, shard: decode_band(own, z, shard))
    got = torch.cat(bands, dim=1)
    assert got.shape == expected.shape == (9, 11 * vae.downscale, 4 * vae.downscale, 3)
    assert _relative(got, expected) < 1e-5


@pytest.mark.parametrize("world", [2, 3])
def test_wan_vae_encode_in_bands_equals_one_device(vae, world):
    """5 frames (chunks of 1 and 4), 7 latent rows of pixels split in whole latent rows."""
    d = vae.downscale
    pixels = torch.rand(5, 7 * d, 3 * d, 3, generator=torch.Generator().manual_seed(1))
    expected = vae.encode(pixels)
    bands = _on_bands(world, vae, lambda own, shard: encode_band(own, pixels, shard))
    got = torch.cat(bands, dim=-2)
    assert got.shape == expected.shape
    assert _relative(got, expected) < 1e-5

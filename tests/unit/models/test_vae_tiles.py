"""VAEDecodeTiled / VAEEncodeTiled tiling (models.vae_tiles) with ComfyUI's rules: tile starts,
pass order, fractional output positions when encoding, and exact reassembly of a local function
from any split of the tiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffmesh.models.vae_tiles import blend, make_plan, run_jobs
from diffmesh.parallel.patch import band_sizes


def test_tile_starts_and_pass_order_follow_comfyui():
    """tiled_scale_multidim: starts range(0, size - overlap, tile - overlap), clamped to size - overlap;
    decode passes (2t, t/2), (t/2, 2t), (t, t) as (rows, cols); encode (t, t), (t/2, 2t), (2t, t/2)."""
    plan = make_plan((1, 4, 20, 9), 8, 2, 8, 3, encode=False)
    assert plan.passes == ((16, 4), (4, 16), (8, 8))
    third = [job[2:] for job in plan.jobs() if job[0] == 2]
    assert third == [(0, 0, 8, 8), (0, 6, 8, 3), (6, 0, 8, 8), (6, 6, 8, 3), (12, 0, 8, 8), (12, 6, 8, 3)]
    assert make_plan((1, 3, 64, 64), 32, 8, 1 / 8, 4, encode=True).passes == ((32, 32), (16, 64), (64, 16))


def _reassembled(plan, fn, tensor, parts: int) -> torch.Tensor:
    """Tiles dealt round-robin over `parts` workers, then blended once, as the engine does."""
    jobs, pieces = plan.jobs(), {}
    for rank in range(parts):
        mine = list(range(rank, len(jobs), parts))
        pieces.update(zip(mine, run_jobs(fn, tensor, [jobs[i] for i in mine])))
    return blend(plan, pieces)


def test_a_local_function_comes_back_whole_from_tiles_spread_over_workers():
    """Nearest 8x upsampling (decode-like) and 8x8 mean pooling (encode-like, output positions start/8)
    are local, so any tiling must give back the untiled result, however the tiles are dealt out."""
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(2, 4, 20, 13, generator=g)
    up = lambda t: F.interpolate(t, scale_factor=8, mode="nearest")       # noqa: E731
    plan = make_plan(tuple(latent.shape), 8, 2, 8, 4, encode=False)
    for parts in (1, 3):
        torch.testing.assert_close(_reassembled(plan, up, latent, parts), up(latent), rtol=0, atol=1e-6)
    pixels = torch.randn(1, 3, 160, 96, generator=g)
    pool = lambda t: F.avg_pool2d(t, 8)                                    # noqa: E731
    plan = make_plan(tuple(pixels.shape), 64, 16, 1 / 8, 3, encode=True)
    assert len({job[0] for job in plan.jobs()}) == 3                       # three passes really tile
    torch.testing.assert_close(_reassembled(plan, pool, pixels, 2), pool(pixels), rtol=0, atol=1e-6)


def test_a_sample_that_fits_every_tile_runs_once_and_comes_back_unchanged():
    latent = torch.randn(1, 4, 8, 8)
    plan = make_plan(tuple(latent.shape), 64, 8, 8, 4, encode=False)
    assert plan.jobs() == [(0, 0, 0, 0, 8, 8)]
    up = lambda t: F.interpolate(t, scale_factor=8, mode="nearest")       # noqa: E731
    assert torch.equal(_reassembled(plan, up, latent, 1), up(latent))


def test_bands_are_whole_units_of_the_downsampling_factor_and_say_why_not():
    assert band_sizes(56, 3, 8) == [24, 16, 16]
    assert band_sizes(26, 3, 1) == [9, 9, 8]
    with pytest.raises(ValueError, match="not a multiple of 8"):
        band_sizes(60, 2, 8)
    with pytest.raises(ValueError, match="cannot be split over 3 workers"):
        band_sizes(16, 3, 8)

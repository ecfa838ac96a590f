"""The Wan video VAE across CPU worker processes (`--parallel auto` / `patch`): a clip's decode and
encode split in bands of rows over 2 and 3 workers give one device's frames and latent; the planner
keeps a small clip on one worker in auto, and VAEDecodeTiled of a video stays on one worker."""

from __future__ import annotations

import pytest
import torch

from same import assert_same

from diffmesh.engine.engine import Engine
from diffmesh.models.handle import ModelHandle


@pytest.fixture(scope="module")
def wan_vae(tiny_model_files) -> ModelHandle:
    return ModelHandle(tiny_model_files["dit"]["wan21vae"], "vae", "wan21")


def _workers(request, count: int):
    return request.getfixturevalue("two_workers" if count == 2 else "three_workers")


@pytest.mark.parametrize("workers", [2, 3])
def test_wan_clip_decode_and_encode_in_bands_match_single_device(request, reference_engine, wan_vae, workers):
    """2 latent frames (5 video frames), 17 latent rows: bands 9/8 or 6/6/5; 5 frames of 136 pixel rows
    encode in bands of whole latent rows."""
    engine = Engine(_workers(request, workers), parallel="patch")
    latent = torch.randn(1, 16, 2, 17, 4, generator=torch.Generator().manual_seed(5))
    frames = engine.vae_decode(wan_vae, latent)
    assert frames.shape == (5, 136, 32, 3)
    assert_same(frames, reference_engine.vae_decode(wan_vae, latent))
    assert_same(engine.vae_encode(wan_vae, frames), reference_engine.vae_encode(wan_vae, frames))


def test_auto_splits_a_tall_clip_and_keeps_a_short_one_whole(two_workers, reference_engine, wan_vae, tmp_path):
    """auto: 16 latent rows (8 per worker) decode in bands; 12 rows stay on one worker; a tiled decode
    of a video is never dealt over the workers (its tiles span all frames)."""
    engine = Engine(two_workers, parallel="auto")
    tall = torch.randn(1, 16, 1, 16, 3, generator=torch.Generator().manual_seed(6))
    from diffmesh.parallel import patch_vae

    assert patch_vae.run_vae(engine, wan_vae, tall, None, encode=False) is not None
    assert patch_vae.run_vae(engine, wan_vae, tall[..., :12, :], None, encode=False) is None
    assert patch_vae.run_vae(engine, wan_vae, tall, {"tile_size": 64, "overlap": 16}, encode=False) is None
    assert_same(engine.vae_decode(wan_vae, tall), reference_engine.vae_decode(wan_vae, tall))

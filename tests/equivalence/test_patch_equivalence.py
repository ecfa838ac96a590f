"""Exact patch parallel (latent rows split in bands across CPU worker processes; halo rows, global
GroupNorm statistics and all keys/values exchanged through a gloo group) gives one device's result:
tiny SD1 / SD2-v / SDXL UNets with 2 workers and 3 workers (uneven bands), the VAE decode and encode
split in bands (SD VAE and the 16-channel Flux VAE), and VAEDecodeTiled / VAEEncodeTiled with their
tiles spread over the workers."""

from __future__ import annotations

import pytest
import torch

from same import assert_same

from diffmesh.engine.engine import Engine
from diffmesh.models.handle import ModelHandle
from diffmesh.sampling.job import SampleJob


def _workers(request, count: int):
    return request.getfixturevalue("two_workers" if count == 2 else "three_workers")


def _job(reference_engine, family: str, path: str, cfg=5.0, sampler="euler_ancestral", steps=3,
         rows=40, cols=12) -> SampleJob:
    """40 latent rows: with the tiny UNets' one downsampling (bands of 2 rows) 3 workers get 14, 14, 12."""
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    clip = ModelHandle(path, "clip", family)
    positive = reference_engine.encode_text(clip, "a photo of a cat")
    negative = reference_engine.encode_text(clip, "blurry")
    latent = torch.zeros(1, 4, rows, cols)
    sigmas = ksampler_sigmas(model_sampling_for(family), "normal", sampler, steps, 1.0)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 42, None), sigmas=sigmas, sampler_name=sampler,
                     cfg=cfg, positive=positive, negative=negative, seed=42)


@pytest.mark.parametrize("family", ["sd1", "sd2v", "sdxl"])
@pytest.mark.parametrize("workers", [2, 3])
def test_patch_parallel_unet_matches_single_device(request, reference_engine, tiny_models, family, workers):
    executor = _workers(request, workers)
    unet = ModelHandle(tiny_models[family], "unet", family)
    job = _job(reference_engine, family, tiny_models[family])
    engine = Engine(executor, parallel="patch")
    result = engine.sample(unet, job)
    assert engine.last_plan.strategy == "patch" and len(engine.last_plan.workers) == workers
    assert_same(result, reference_engine.sample(unet, job))


@pytest.fixture(scope="module")
def vaes(tiny_models, tiny_model_files) -> dict[str, ModelHandle]:
    return {"sd": ModelHandle(tiny_models["sd1"], "vae", "sd1"),
            "flux": ModelHandle(tiny_model_files["flux"]["flux_vae"], "vae", "flux")}


def _latent(kind: str, rows: int = 26, cols: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 16 if kind == "flux" else 4, rows, cols, generator=g)


def _image(rows: int = 104, cols: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.rand(1, rows, cols, 3, generator=g)


@pytest.mark.parametrize("kind", ["sd", "flux"])
@pytest.mark.parametrize("workers", [2, 3])
def test_vae_decode_and_encode_split_in_bands_match_single_device(request, reference_engine, vaes, kind, workers):
    """26 latent rows decode as bands of 13/13 or 9/9/8 rows; 104 image rows (13 latent rows) encode
    as bands of 56/48 or 40/32/32 pixel rows: the same images and latents as one device."""
    engine = Engine(_workers(request, workers), parallel="patch")
    latent, image = _latent(kind), _image()
    assert_same(engine.vae_decode(vaes[kind], latent), reference_engine.vae_decode(vaes[kind], latent))
    assert_same(engine.vae_encode(vaes[kind], image), reference_engine.vae_encode(vaes[kind], image))


def test_tiled_decode_and_encode_spread_over_workers_match_single_device(three_workers, reference_engine, vaes):
    """VAEDecodeTiled / VAEEncodeTiled: the tiles of ComfyUI's three tilings dealt over 3 workers, blended
    once: the one-device tiled result (and tiling really happens: not the untiled result)."""
    engine = Engine(three_workers, parallel="auto")
    vae, latent, image = vaes["sd"], _latent("sd", 20, 12), _image(160, 96)
    tiling = {"tile_size": 64, "overlap": 16}
    tiled = engine.vae_decode(vae, latent, tiling)
    assert_same(tiled, reference_engine.vae_decode(vae, latent, tiling), 1e-6)
    assert (tiled - reference_engine.vae_decode(vae, latent)).abs().max() > 1e-3
    tiled = engine.vae_encode(vae, image, tiling)
    assert_same(tiled, reference_engine.vae_encode(vae, image, tiling), 1e-6)
    assert (tiled - reference_engine.vae_encode(vae, image)).abs().max() > 1e-3


def test_planner_picks_patch_for_a_large_cfg_one_image_and_says_why_not_otherwise(two_workers, reference_engine,
                                                                                  tiny_models):
    """auto: a cfg-1 SD image of 64 latent rows (32 per worker) goes to patch parallel, a 16-row one
    stays on one worker, cfg 7 prefers CFG parallel (no halos); --parallel patch on 12 rows (not a
    multiple of SD1's 8) runs on one worker and the plan says why."""
    unet = ModelHandle(tiny_models["sd1"], "unet", "sd1")
    big = _job(reference_engine, "sd1", tiny_models["sd1"], cfg=1.0, sampler="euler", steps=1, rows=64, cols=8)
    auto = Engine(two_workers, parallel="auto")
    result = auto.sample(unet, big)
    assert auto.last_plan.strategy == "patch"
    assert_same(result, reference_engine.sample(unet, big))
    auto.sample(unet, _job(reference_engine, "sd1", tiny_models["sd1"], cfg=1.0, steps=1, rows=16, cols=8))
    assert auto.last_plan.strategy == "single"
    auto.sample(unet, _job(reference_engine, "sd1", tiny_models["sd1"], cfg=7.0, steps=1, rows=64, cols=8))
    assert auto.last_plan.strategy == "cfg"
    asked = Engine(two_workers, parallel="patch")
    asked.sample(unet, _job(reference_engine, "sd1", tiny_models["sd1"], steps=1, rows=12, cols=8))
    assert asked.last_plan.strategy == "single" and "not split into bands of 8 rows" in asked.last_plan.reason


def test_controlnet_residuals_reach_each_band(tiny_models, tmp_path):
    """A ControlNet-conditioned KSampler run through the real runtime: 2 workers with --parallel patch
    (each band gets its rows of every residual) give the latent of the 1-worker runtime."""
    import argparse
    import os

    from diffmesh.models import testmodels_controlnet as tcn
    from diffmesh.runtime import Runtime

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "controlnet").mkdir()
    os.symlink(tiny_models["sd1"], models / "checkpoints" / "tiny-sd1.safetensors")
    tcn.write(models / "controlnet" / "tiny-cn.safetensors", "cldm")
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 320, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "31": {"class_type": "EmptyLatentImage", "inputs": {"width": 80, "height": 48, "batch_size": 1}},
        "30": {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["4", 2]}},
        "20": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny-cn.safetensors"}},
        "21": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["20", 0], "image": ["30", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": ["4", 2]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                  "positive": ["21", 0], "negative": ["21", 1],
                                                  "latent_image": ["5", 0]}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "t"}}}
    latents = []
    for workers, parallel in ((1, "none"), (2, "patch")):
        ns = argparse.Namespace(base_directory=str(tmp_path / f"base{workers}"), models_dir=str(models), cpu=True,
                                workers=workers, threads_per_worker=1, parallel=parallel)
        runtime = Runtime.build(ns)
        try:
            result = runtime.executor.execute(prompt, "t", {}, None)
            assert result.status == "success", result.error or result.node_errors
            latents.append(runtime.executor.cache.get("3").outputs[0][0]["samples"])
            if workers == 2:
                assert runtime.engine.last_plan.strategy == "patch"
        finally:
            runtime.close()
    assert_same(latents[1], latents[0])


def test_multigpu_workunits_patch_request_overrides_parallel_none(two_workers, reference_engine, tiny_models):
    """MultiGPU_WorkUnits' strategy 'patch' (the node override) splits the rows under --parallel none."""
    from diffmesh.parallel.request import with_parallel_request

    unet = ModelHandle(tiny_models["sd1"], "unet", "sd1")
    job = _job(reference_engine, "sd1", tiny_models["sd1"], cfg=1.0, sampler="euler", steps=1, rows=32, cols=8)
    engine = Engine(two_workers, parallel="none")
    result = engine.sample(with_parallel_request(unet, "patch"), job)
    assert engine.last_plan.strategy == "patch" and len(engine.last_plan.workers) == 2
    assert_same(result, reference_engine.sample(unet, job))

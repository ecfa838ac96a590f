"""Patch parallel between CUDA workers: the group is NCCL (halo rows, norm statistics and keys/values
exchanged device to device) when torch has it; the UNet's latent and the VAE's image must equal one
device's. Needs two CUDA devices (marked gpu; skipped without)."""

from __future__ import annotations

import pytest
import torch

TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.gpu
@pytest.mark.skipif(not TWO_GPUS, reason="needs two CUDA devices")
def test_patch_parallel_over_nccl_matches_one_device(tiny_models):
    from diffmesh.engine.engine import Engine
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.inproc import InProcessExecutor
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.models.handle import ModelHandle
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    unet = ModelHandle(tiny_models["sd1"], "unet", "sd1", dtype="fp32")
    vae = ModelHandle(tiny_models["sd1"], "vae", "sd1")
    g = torch.Generator().manual_seed(1)
    cond = [[torch.randn(1, 77, 32, generator=g), {}]]
    latent = torch.zeros(1, 4, 40, 12)
    job = SampleJob(latent=latent, noise=prepare_noise(latent, 7, None),
                    sigmas=ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", 3, 1.0),
                    sampler_name="euler", cfg=1.0, positive=cond, negative=cond, seed=7)
    one = InProcessExecutor([WorkerSpec(worker_id=0, device="cuda:0")])
    one.start()
    two = MultiProcessExecutor([WorkerSpec(worker_id=i, device=f"cuda:{i}") for i in range(2)])
    two.start()
    try:
        reference = Engine(one, parallel="none")
        expected = reference.sample(unet, job)
        engine = Engine(two, parallel="patch")
        result = engine.sample(unet, job)
        assert engine.last_plan.strategy == "patch"
        assert ((result - expected).norm() / expected.norm()).item() < 1e-4     # TF32/kernel choice on GPUs
        image, expected_image = engine.vae_decode(vae, expected), reference.vae_decode(vae, expected)
        assert ((image - expected_image).norm() / expected_image.norm()).item() < 1e-4
    finally:
        two.shutdown(timeout=10)
        one.shutdown()

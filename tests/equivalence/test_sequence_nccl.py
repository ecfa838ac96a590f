"""Sequence parallel between CUDA workers: the group is NCCL (device-to-device exchanges) when torch has
it; the result must equal one device's. Needs two CUDA devices (marked gpu; skipped without)."""

from __future__ import annotations

import pytest
import torch

TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2


@pytest.mark.gpu
@pytest.mark.skipif(not TWO_GPUS, reason="needs two CUDA devices")
@pytest.mark.parametrize("attention", ["ulysses", "ring"])
def test_sequence_parallel_over_nccl_matches_one_device(tiny_model_files, attention):
    from diffmesh.engine.engine import Engine
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.inproc import InProcessExecutor
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.models.handle import ModelHandle
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    flux = ModelHandle(tiny_model_files["flux"]["flux_dev"], "unet", "flux", dtype="fp32")
    g = torch.Generator().manual_seed(1)
    cond = [[torch.randn(1, 12, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g), "guidance": 3.5}]]
    latent = torch.zeros(1, 16, 10, 14)
    job = SampleJob(latent=latent, noise=prepare_noise(latent, 7, None),
                    sigmas=ksampler_sigmas(model_sampling_for(flux), "simple", "euler", 3, 1.0),
                    sampler_name="euler", cfg=1.0, positive=cond, negative=cond, seed=7)
    one = InProcessExecutor([WorkerSpec(worker_id=0, device="cuda:0")])
    one.start()
    two = MultiProcessExecutor([WorkerSpec(worker_id=i, device=f"cuda:{i}") for i in range(2)])
    two.start()
    try:
        expected = Engine(one, parallel="none").sample(flux, job)
        engine = Engine(two, parallel="sequence", sequence_attention=attention)
        result = engine.sample(flux, job)
        assert engine.last_plan.strategy == "sequence"
        assert ((result - expected).norm() / expected.norm()).item() < 1e-4     # TF32/kernel choice on GPUs
    finally:
        two.shutdown(timeout=10)
        one.shutdown()

"""The CFG exchange's backend: gloo through CPU memory unless both workers are CUDA devices and
torch has NCCL. The NCCL run needs two CUDA devices (marked gpu; not run on a machine without)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from diffmesh.parallel.cfg import group_backend

TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2


def test_cpu_or_mixed_pairs_use_gloo_and_cuda_pairs_use_nccl_where_torch_has_it():
    assert group_backend(["cpu", "cpu"]) == "gloo"
    assert group_backend(["cuda:0", "cpu"]) == "gloo"
    assert group_backend(["cuda:0", "cuda:1"]) == ("nccl" if dist.is_nccl_available() else "gloo")


@pytest.mark.gpu
@pytest.mark.skipif(not TWO_GPUS, reason="needs two CUDA devices")
def test_cfg_parallel_over_nccl_matches_one_device(tiny_models):
    from diffmesh.engine.engine import Engine
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.inproc import InProcessExecutor
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.models.handle import ModelHandle
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    unet, clip = (ModelHandle(tiny_models["sd1"], c, "sd1", dtype="fp32") for c in ("unet", "clip"))
    one = InProcessExecutor([WorkerSpec(worker_id=0, device="cuda:0")])
    one.start()
    two = MultiProcessExecutor([WorkerSpec(worker_id=i, device=f"cuda:{i}") for i in range(2)])
    two.start()
    try:
        reference = Engine(one, parallel="none")
        latent = torch.zeros(1, 4, 8, 8)
        job = SampleJob(latent=latent, noise=prepare_noise(latent, 7, None),
                        sigmas=ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", 4, 1.0),
                        sampler_name="euler", cfg=6.5, positive=reference.encode_text(clip, "a cat"),
                        negative=reference.encode_text(clip, ""), seed=7)
        parallel = Engine(two, parallel="cfg")
        result = parallel.sample(unet, job)
        assert parallel.last_plan.strategy == "cfg"
        expected = reference.sample(unet, job)
        assert ((result - expected).norm() / expected.norm()).item() < 1e-4
    finally:
        two.shutdown(timeout=5)
        one.shutdown()

"""A diffusion transformer goes through every parallel strategy and memory mode like the UNet:
tiny Flux.1-dev, CPU workers; each result must equal one device's (in-process, whole model resident)."""

from __future__ import annotations

import threading

import pytest
import torch

from same import assert_same

from diffmesh.engine.engine import Engine
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.models.handle import ModelHandle
from diffmesh.sampling.job import SampleJob



@pytest.fixture(scope="module")
def flux(tiny_model_files) -> ModelHandle:
    """Tiny Flux-dev with ModelSamplingFlux at 64x64 (as a workflow would set it)."""
    from diffmesh.nodes.dit import flux_mu

    return ModelHandle(tiny_model_files["flux"]["flux_dev"], "unet", "flux", sampling=("flux", flux_mu(1.15, 0.5, 64, 64), 1.0))


def _conditioning(seed: int, rows: int, guidance: float | None = 3.5) -> list:
    g = torch.Generator().manual_seed(seed)
    options = {"pooled_output": torch.randn(1, 32, generator=g)}
    if guidance is not None:
        options["guidance"] = guidance
    return [[torch.randn(1, rows, 64, generator=g), options]]


def _job(flux, batch=1, cfg=1.0, sampler="euler", seed=42, steps=3) -> SampleJob:
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    latent = torch.zeros(batch, 16, 8, 8)
    sigmas = ksampler_sigmas(model_sampling_for(flux), "simple", sampler, steps, 1.0)
    return SampleJob(latent=latent, noise=prepare_noise(latent, seed, None), sigmas=sigmas, sampler_name=sampler,
                     cfg=cfg, positive=_conditioning(1, 12), negative=_conditioning(2, 7, None), seed=seed)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_batch_parallel_matches_single_device(two_workers, reference_engine, flux, sampler):
    job = _job(flux, batch=4, sampler=sampler)
    engine = Engine(two_workers, parallel="batch")
    result = engine.sample(flux, job)
    assert engine.last_plan.strategy == "batch"
    assert_same(result, reference_engine.sample(flux, job))


def test_cfg_parallel_matches_single_device(two_workers, reference_engine, flux):
    """cfg 3: the positive and a negative of another length run on two workers and are combined."""
    job = _job(flux, cfg=3.0, steps=4)
    engine = Engine(two_workers, parallel="cfg")
    result = engine.sample(flux, job)
    assert engine.last_plan.strategy == "cfg"
    assert_same(result, reference_engine.sample(flux, job))


def test_cfg_one_never_evaluates_the_negative(reference_engine, flux):
    """At cfg 1 the negative is skipped as in ComfyUI: any negative gives the same latent."""
    job = _job(flux, cfg=1.0)
    other = SampleJob(**{**job.__dict__, "negative": _conditioning(9, 30, None)})
    assert torch.equal(reference_engine.sample(flux, job), reference_engine.sample(flux, other))


def test_queue_parallel_prompts_on_two_workers_match_single_device(two_workers, reference_engine, flux):
    engine = Engine(two_workers, parallel="queue")
    leases = [engine.acquire(pending=2), engine.acquire(pending=2)]
    results: dict[int, torch.Tensor] = {}

    def run(lease, seed):
        with lease:
            results[seed] = lease.engine.sample(flux, _job(flux, seed=seed))

    threads = [threading.Thread(target=run, args=(lease, seed)) for lease, seed in zip(leases, (5, 6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for seed in (5, 6):
        assert_same(results[seed], reference_engine.sample(flux, _job(flux, seed=seed)))


@pytest.mark.parametrize("mode", ["lowvram", "novram"])
def test_streamed_transformer_blocks_give_the_resident_latent_bit_for_bit(reference_engine, flux, mode):
    """lowvram under a budget smaller than the model, and novram: the blocks (double/single blocks,
    embedders, final layer) stream through forward hooks and the latent is unchanged."""
    budget = 6 * 1024 ** 2                          # the tiny Flux holds 15 MB of weights
    executor = InProcessExecutor([WorkerSpec(worker_id=0, device="cpu", threads=1,
                                             settings={"vram_mode": mode, "vram_budget": budget})])
    executor.start()
    try:
        engine = Engine(executor, parallel="none")
        job = _job(flux, cfg=2.0)
        streamed = engine.sample(flux, job)
        stats = executor.call(0, "memory_stats").result()
    finally:
        executor.shutdown()
    unet = next(c for c in stats["components"] if c["component"] == "unet")
    assert unet["mode"] == mode and unet["streamed_blocks"] >= 4 and stats["peak"] <= budget
    assert torch.equal(streamed, reference_engine.sample(flux, job))


def test_out_of_memory_recovery_streams_the_transformer_and_gives_the_same_latent(reference_engine, flux):
    """normalvram with a budget below the model's size: the first load fails as on a device, the
    memory manager lowers the model to lowvram and retries; the latent equals the resident one."""
    executor = InProcessExecutor([WorkerSpec(worker_id=0, device="cpu", threads=1,
                                             settings={"vram_mode": "normalvram", "vram_budget": 8 * 1024 ** 2})])
    executor.start()
    try:
        job = _job(flux)
        result = Engine(executor, parallel="none").sample(flux, job)
        stats = executor.call(0, "memory_stats").result()
    finally:
        executor.shutdown()
    assert next(c for c in stats["components"] if c["component"] == "unet")["mode"] == "lowvram"
    assert torch.equal(result, reference_engine.sample(flux, job))

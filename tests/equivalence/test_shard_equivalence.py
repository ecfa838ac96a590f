"""Models larger than one device (`--cpu --workers 2 --vram-budget B`, S/2 < B < S): sharded weights
and layer split give one device's final latent, each worker's weights stay within the budget, and
one worker with the same budget streams (or, with streaming ruled out, fails naming the flags).

Memory is measured two ways: the memory manager's accounted bytes (its peak over the job), and the
bytes of the tensors the layout actually holds (shards + whole-kept tensors + gathered buffers,
sampled at every block). Both are weights only; activations are not counted here."""

from __future__ import annotations

import pytest
import torch

from same import assert_same

from diffmesh.devices.offload import module_bytes
from diffmesh.engine.engine import Engine
from diffmesh.errors import DeviceOutOfMemory
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.models.handle import ModelHandle
from diffmesh.sampling.job import SampleJob

CONTEXT_WIDTH = 64          # the tiny DiTs' text width


def dit_job(model: ModelHandle, cfg: float = 2.0, steps: int = 2) -> SampleJob:
    """A tiny Flux job on an odd latent (10x14: 35 image tokens, split 18/17 by the shard group)."""
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    def cond(seed: int, rows: int) -> list:
        g = torch.Generator().manual_seed(seed)
        return [[torch.randn(1, rows, CONTEXT_WIDTH, generator=g),
                 {"pooled_output": torch.randn(1, 32, generator=g), "guidance": 3.5}]]
    latent = torch.zeros(1, 16, 10, 14)
    sigmas = ksampler_sigmas(model_sampling_for(model), "simple", "euler", steps, 1.0)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 42, None), sigmas=sigmas, sampler_name="euler",
                     cfg=cfg, positive=cond(1, 12), negative=cond(2, 7), seed=42)


def _unet_bytes(handle: ModelHandle) -> int:
    from diffmesh.models.load import WeightStore, build_component

    return module_bytes(build_component(handle, torch.device("cpu"), torch.float32, WeightStore()))


@pytest.fixture(scope="module")
def sizes(sd1, tiny_model_files) -> dict[str, int]:
    flux = ModelHandle(tiny_model_files["flux"]["flux_dev"], "unet", "flux")
    return {"sd1": _unet_bytes(sd1["unet"]), "flux": _unet_bytes(flux)}


# below the model, above half of it: S/2 + two of the largest blocks (tiny Flux: one Linear is 10% of it)
FRACTION = {"sd1": 0.7, "flux": 0.8}


def _budget(size: int, family: str = "sd1") -> int:
    return int(size * FRACTION[family])


@pytest.fixture(scope="module")
def budget_workers(sizes):
    """Two CPU workers per model family, each with a budget of 0.7 x that model (started once)."""
    started = {}

    def get(family: str) -> MultiProcessExecutor:
        if family not in started:
            settings = {"vram_budget": _budget(sizes[family], family)}
            executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings=settings)
                                             for i in range(2)], start_timeout=120)
            executor.start()
            started[family] = executor
        return started[family]
    yield get
    for executor in started.values():
        executor.shutdown(timeout=5)


def _within_budget(executor, budget: int) -> list[dict]:
    layouts = []
    for worker in (0, 1):
        stats = executor.call(worker, "memory_stats").result()
        assert stats["peak"] <= budget * 1.10, stats
        layout = next(c["layout"] for c in stats["components"] if "layout" in c)
        assert layout["peak_live_bytes"] <= budget * 1.10, layout
        assert layout["peak_live_bytes"] < layout["model_bytes"], layout
        layouts.append(layout)
    return layouts


@pytest.mark.parametrize("strategy", ["shard", "layersplit"])
def test_unet_pooled_matches_single_device(budget_workers, reference_engine, sd1, make_job, sizes, strategy):
    executor = budget_workers("sd1")
    job = make_job(cfg=7.0, sampler="euler_ancestral")
    engine = Engine(executor, parallel=strategy)
    result = engine.sample(sd1["unet"], job)
    assert engine.last_plan.strategy == strategy and len(engine.last_plan.workers) == 2
    assert_same(result, reference_engine.sample(sd1["unet"], job))
    layouts = _within_budget(executor, _budget(sizes["sd1"]))
    if strategy == "layersplit":
        assert all(min(layout["blocks_per_rank"]) > 0 for layout in layouts)
        assert layouts[0]["activation_bytes_sent"] > 0 and layouts[1]["activation_bytes_sent"] > 0


@pytest.mark.parametrize("strategy", ["shard", "layersplit"])
def test_flux_pooled_matches_single_device(budget_workers, reference_engine, tiny_model_files, sizes, strategy):
    """Sharded Flux also splits the image tokens (sequence parallel in the same workers)."""
    flux = ModelHandle(tiny_model_files["flux"]["flux_dev"], "unet", "flux")
    executor = budget_workers("flux")
    job = dit_job(flux, cfg=2.0, steps=2)
    result = Engine(executor, parallel=strategy).sample(flux, job)
    assert_same(result, reference_engine.sample(flux, job))
    _within_budget(executor, _budget(sizes["flux"], "flux"))


def test_one_worker_streams_within_the_same_budget(reference_engine, sd1, make_job, sizes):
    budget = _budget(sizes["sd1"])
    executor = InProcessExecutor([WorkerSpec(worker_id=0, device="cpu", threads=1,
                                             settings={"vram_budget": budget})])
    executor.start()
    try:
        job = make_job(cfg=7.0)
        result = Engine(executor, parallel="none").sample(sd1["unet"], job)
        stats = executor.call(0, "memory_stats").result()
        unet = next(c for c in stats["components"] if c["component"] == "unet")
        assert unet["mode"] == "lowvram" and unet["streamed_blocks"] > 0      # recovery lowered it to streaming
        assert stats["peak"] <= budget
        assert_same(result, reference_engine.sample(sd1["unet"], job))
    finally:
        executor.shutdown()


def test_group_fails_together_naming_the_flags(sd1, make_job, sizes):
    """A budget below S/N: no member can place its share; both fail at once with the fix."""
    settings = {"vram_budget": int(sizes["sd1"] * 0.3)}
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings=settings)
                                     for i in range(2)], start_timeout=120)
    executor.start()
    try:
        with pytest.raises(DeviceOutOfMemory) as info:
            Engine(executor, parallel="layersplit").sample(sd1["unet"], make_job(cfg=1.0, steps=1))
        assert "--vram-budget" in str(info.value) and "--workers" in str(info.value)
    finally:
        executor.shutdown(timeout=5)

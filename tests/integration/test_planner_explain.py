"""`--parallel auto --explain`: the cost model's table and the memory-aware choice, on real engines
with budgets (`--vram-budget`) over the tiny SD1 UNet; flags override the choice. Planning only:
no sampling runs here (the strategies themselves are tested in tests/equivalence/test_shard_*)."""

from __future__ import annotations

import pytest
import torch

from diffmesh.engine import costmodel
from diffmesh.engine.engine import Engine
from diffmesh.engine.options import add_engine_arguments
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.sampling.job import SampleJob


@pytest.fixture(scope="module")
def unet_bytes(unet) -> int:
    from diffmesh.devices.offload import module_bytes
    from diffmesh.models.load import WeightStore, build_component

    return module_bytes(build_component(unet, torch.device("cpu"), torch.float32, WeightStore()))


def _job(cfg: float = 7.0) -> SampleJob:
    latent = torch.zeros(1, 4, 8, 8)
    cond = [[torch.zeros(1, 77, 32), {}]]
    return SampleJob(latent=latent, noise=torch.zeros_like(latent), sigmas=torch.tensor([1.0, 0.0]),
                     sampler_name="euler", cfg=cfg, positive=cond, negative=cond, seed=0)


def _engine(workers: int, budget: int | None, parallel: str, lines: list[str]) -> Engine:
    settings = {} if budget is None else {"vram_budget": budget}
    executor = InProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings=settings)
                                  for i in range(workers)])
    return Engine(executor, parallel=parallel, explain=lines.append)


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines()[2:]:
        parts = line.split()
        rows[parts[0]] = parts
    return rows


def test_auto_pools_memory_when_the_model_does_not_fit(unet, unet_bytes):
    lines: list[str] = []
    # 0.95: the measured activations of this job (engine.activations, 1.7 MB) are 40% of the tiny
    # UNet's weights (4.2 MB), so below ~0.9 even half of the weights plus activations does not fit
    plan = _engine(2, int(unet_bytes * 0.95), "auto", lines).plan(unet, _job())
    assert plan.strategy in ("shard", "layersplit") and len(plan.workers) == 2
    rows = _rows(lines[-1])
    assert rows["resident"][5] == "no"                     # S + activations > budget
    assert rows[plan.strategy][5] == "yes" and rows[plan.strategy][-1] == "<"
    assert {"streamed", "shard", "layersplit", "cfg", "patch"} <= set(rows)
    assert f"{plan.strategy} - " in lines[-1].splitlines()[0]


def test_auto_keeps_the_planner_choice_when_the_model_fits(unet, unet_bytes):
    lines: list[str] = []
    plan = _engine(2, unet_bytes * 4, "auto", lines).plan(unet, _job(cfg=7.0))
    assert plan.strategy not in ("shard", "layersplit")
    assert _rows(lines[-1])["resident"][5] == "yes"


def test_flag_overrides_the_memory_choice(unet, unet_bytes):
    lines: list[str] = []
    plan = _engine(2, int(unet_bytes * 0.7), "none", lines).plan(unet, _job())
    assert plan.strategy == "single"                       # one device: the memory manager streams
    assert "--parallel none" in lines[-1] and "streamed" in lines[-1].splitlines()[0] or plan.reason


def test_one_worker_streams_by_prediction(unet, unet_bytes):
    lines: list[str] = []
    plan = _engine(1, int(unet_bytes * 0.95), "auto", lines).plan(unet, _job())    # 0.95: see above
    assert plan.strategy == "single"
    rows = _rows(lines[-1])
    assert "shard" not in rows and rows["streamed"][5] == "yes" and rows["streamed"][-1] == "<"


def test_explain_flag_parses():
    import argparse

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    ns = parser.parse_args(["--parallel", "auto", "--explain"])
    assert ns.explain and ns.parallel == "auto"
    assert parser.parse_args(["--parallel", "shard"]).parallel == "shard"


def test_cost_model_streaming_grows_with_bytes_moved_and_sharding_needs_a_share():
    model = costmodel.ModelFacts("dit", total_bytes=16_000, block_bytes=(1_000,) * 16, flops=1e9, hidden_bytes=100)
    fast = costmodel.DeviceFacts(flops=1e9, budget=8_000, host_bw=1e4, peer_bw=1e5, latency=0.0)
    tight = costmodel.DeviceFacts(flops=1e9, budget=6_000, host_bw=1e4, peer_bw=1e5, latency=0.0)
    by = {p.strategy: p for p in costmodel.predict(model, fast, 2)}
    tight_by = {p.strategy: p for p in costmodel.predict(model, tight, 2)}
    assert tight_by["streamed"].step_s - by["streamed"].step_s == pytest.approx(2_000 / 1e4)
    assert by["shard"].memory == pytest.approx(8_000 + 2_000 + model.activation_bytes / 2)
    assert not by["resident"].fits and by["layersplit"].memory < by["resident"].memory
    assert costmodel.choose(list(by.values())).fits

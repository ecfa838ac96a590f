"""The planner predicts with the link it measures: `--explain` over two real CPU worker processes
probes the link among them once (`engine.explain.link_figures`, kept in `Engine.links`), predicts
the two-worker strategies with the measured latency and bandwidth, and says which figures it used;
with one worker, or when the workers cannot form a group, it falls back to the documented table and
says so. Planning only, on the tiny SD1 UNet: no sampling runs here."""

from __future__ import annotations

import math

import pytest
import torch

from diffmesh.engine import costmodel, explain
from diffmesh.engine.engine import Engine
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.sampling.job import SampleJob

TWO_WORKER = ("shard", "layersplit", "cfg", "patch")


@pytest.fixture(scope="module")
def unet_bytes(unet) -> int:
    return explain.job_facts(unet, _job(), 4).total_bytes


def _job(cfg: float = 7.0) -> SampleJob:
    latent = torch.zeros(1, 4, 8, 8)
    cond = [[torch.zeros(1, 77, 32), {}]]
    return SampleJob(latent=latent, noise=torch.zeros_like(latent), sigmas=torch.tensor([1.0, 0.0]),
                     sampler_name="euler", cfg=cfg, positive=cond, negative=cond, seed=0)


def _rows(text: str) -> dict[str, list[str]]:
    """The table's rows by strategy (line 0 is the plan, line 1 the header, the last the link)."""
    return {line.split()[0]: line.split() for line in text.splitlines()[2:-1]}


def _unstarted(workers: int, lines: list[str], budget: int | None = None, parallel: str = "auto") -> Engine:
    """An engine over in-process workers that were never started: planning works, any call fails."""
    settings = {} if budget is None else {"vram_budget": budget}
    executor = InProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings=settings)
                                  for i in range(workers)])
    return Engine(executor, parallel=parallel, explain=lines.append)


def test_explain_reports_the_link_measured_among_two_worker_processes(two_processes, unet):
    lines: list[str] = []
    engine = Engine(two_processes, parallel="auto", explain=lines.append)
    engine.plan(unet, _job())
    figures = engine.links[(0, 1)]
    assert figures["latency_s"] > 0 and 0 < figures["peer_bw_bytes_per_s"] < math.inf
    said = lines[-1].splitlines()[-1]
    assert said.startswith(f"link: measured {figures['latency_s'] * 1e3:.2f} ms per collective, "
                           f"{figures['peer_bw_bytes_per_s'] / 1e6:.0f} MB/s")
    assert "among workers 0, 1" in said
    engine.plan(unet, _job())                    # a later job reuses the figures: one probe per worker set
    assert engine.links[(0, 1)] is figures and lines[-1].splitlines()[-1] == said


def test_two_worker_predictions_follow_the_link_figures(two_processes, unet):
    lines: list[str] = []
    engine = Engine(two_processes, parallel="auto", explain=lines.append)
    engine.plan(unet, _job())
    measured = explain.link_figures(engine, (0, 1), "cpu")
    assert measured.measured
    facts = explain.job_facts(unet, _job(), 4)

    def steps(link: explain.LinkFigures | None) -> dict[str, float]:
        device = explain.device_facts("cpu", 1, None, link)
        return {p.strategy: p.step_s for p in costmodel.predict(facts, device, 2, 7.0)}

    used, documented = steps(measured), steps(None)
    slow = steps(explain.LinkFigures(measured.latency * 10, measured.peer_bw / 10, False, "ten times slower"))
    table = _rows(lines[-1])
    for name in TWO_WORKER:
        assert float(table[name][2]) == pytest.approx(used[name], rel=1e-3), name     # the table used the probe
        assert used[name] != pytest.approx(documented[name], rel=1e-3), name          # ... not the table's link
        assert slow[name] > used[name], name
    assert slow["resident"] == used["resident"] == documented["resident"]       # one worker: no link in it


def test_auto_without_explain_measures_only_when_the_model_does_not_fit(two_processes, unet, unet_bytes):
    fits = Engine(two_processes, parallel="auto")
    assert fits.plan(unet, _job()).strategy not in ("shard", "layersplit")
    assert fits.links == {}                      # no budget: nothing to pool, no probe
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1,
                                                settings={"vram_budget": int(unet_bytes * 0.95)}) for i in range(2)],
                                    start_timeout=120)
    executor.start()
    try:
        tight = Engine(executor, parallel="auto")
        assert tight.plan(unet, _job()).strategy in ("shard", "layersplit")
        assert tight.links[(0, 1)]["peer_bw_bytes_per_s"] > 0
    finally:
        executor.shutdown(timeout=5)


def test_a_slow_link_makes_auto_stream_instead_of_pooling(unet, unet_bytes):
    """The choice follows the link figures the engine holds: pooled memory over a fast link, streaming
    on one worker over a link too slow to gather weights or pass activations through."""
    budget = int(unet_bytes * 0.95)              # see tests/integration/test_planner_explain.py
    choices = {}
    for name, latency, bandwidth in (("fast", 1e-6, 1e12), ("slow", 1.0, 1e3)):
        lines: list[str] = []
        engine = _unstarted(2, lines, budget)
        engine.links[(0, 1)] = {"latency_s": latency, "peer_bw_bytes_per_s": bandwidth,
                                "median_s_by_size": {"4096": latency}}
        choices[name] = engine.plan(unet, _job()).strategy
        assert lines[-1].splitlines()[-1].startswith(f"link: measured {latency * 1e3:.2f} ms"), name
    assert choices["fast"] in ("shard", "layersplit") and choices["slow"] not in ("shard", "layersplit")


def test_one_worker_predicts_with_the_documented_link_and_says_so(unet):
    lines: list[str] = []
    engine = _unstarted(1, lines)
    engine.plan(unet, _job())
    link = costmodel.LINKS["gloo-loopback"]
    assert lines[-1].splitlines()[-1] == (
        f"link: documented {link['latency'] * 1e3:.2f} ms per collective, {link['bw'] / 1e6:.0f} MB/s "
        "(gloo-loopback table, not measured: one worker)")
    assert engine.links == {}


def test_workers_that_cannot_form_a_group_fall_back_to_the_documented_link(unet):
    lines: list[str] = []
    engine = _unstarted(2, lines)                # never started: the probe's first call fails
    plan = engine.plan(unet, _job())
    said = lines[-1].splitlines()[-1]
    assert said.startswith("link: documented ") and "not measured: the probe failed" in said
    assert plan.strategy == "cfg"                # the plan still stands
    failure = engine.links[(0, 1)]
    engine.plan(unet, _job())                    # the failure is kept: no second probe per job
    assert engine.links[(0, 1)] is failure and lines[-1].splitlines()[-1] == said

"""The micro-batch pipeline of layer split (`parallel.pipeline`): with 2+ rows in a model call
(batch > 1, or cfg != 1), `--cpu --workers N --parallel layersplit` with a budget below the model
runs the forward in micro-batches and still gives one device's final latent (within 1e-5 relative);
the per-worker block times it records show micro-batch m+1 starting before micro-batch m ended
(an ordering fact, not a speed), and a one-row call runs the serial path."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from same import assert_same

from diffmesh.engine.engine import Engine
from diffmesh.errors import ConfigError
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.models.handle import ModelHandle
from diffmesh.parallel.pipeline import ENV, MicroBatchRun, micro_batch_count, requested_micro_batches, row_bounds

from test_shard_equivalence import _budget, _unet_bytes, dit_job


@pytest.fixture(scope="module")
def flux(tiny_model_files) -> ModelHandle:
    return ModelHandle(tiny_model_files["flux"]["flux_dev"], "unet", "flux")


@pytest.fixture(scope="module")
def pools(sd1, flux):
    """`pools(family, world)`: `world` one-thread CPU workers, each with a budget below the model
    (0.7 x SD1, 0.8 x Flux: the shard tests' budgets), started once per module."""
    sizes = {"sd1": _unet_bytes(sd1["unet"]), "flux": _unet_bytes(flux)}
    started: dict[tuple[str, int], MultiProcessExecutor] = {}

    def get(family: str, world: int) -> MultiProcessExecutor:
        if (family, world) not in started:
            settings = {"vram_budget": _budget(sizes[family], family)}
            executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings=settings)
                                             for i in range(world)], start_timeout=120)
            executor.start()
            started[(family, world)] = executor
        return started[(family, world)]
    yield get
    for executor in started.values():
        executor.shutdown(timeout=5)


def _pipelines(executor, world: int) -> list[dict]:
    out = []
    for worker in range(world):
        stats = executor.call(worker, "memory_stats").result()
        out.append(next(c["layout"] for c in stats["components"] if "layout" in c))
    return out


def _assert_overlapped(layouts: list[dict], rows: int) -> None:
    """The last model call ran `rows` rows as one micro-batch per row, and some micro-batch m+1
    started its first block before micro-batch m finished its last one (times from every worker's
    monotonic clock, one clock on one host)."""
    calls = [layout["pipeline"]["last_call"] for layout in layouts]
    count = micro_batch_count(rows)
    assert count >= 2 and all(call["rows"] == rows and call["micro_batches"] == count for call in calls), calls
    events = [event for call in calls for event in call["trace"]]        # [micro-batch, block, start, end]
    assert {event[0] for event in events} == set(range(count))
    first_start = {m: min(e[2] for e in events if e[0] == m) for m in range(count)}
    last_end = {m: max(e[3] for e in events if e[0] == m) for m in range(count)}
    assert any(first_start[m + 1] < last_end[m] for m in range(count - 1)), (first_start, last_end)
    assert all(layout["activation_bytes_received"] > 0 for layout in layouts)


@pytest.mark.parametrize("world,batch,cfg", [(2, 2, 7.0), (3, 3, 1.0)])
def test_unet_pipeline_matches_single_device(pools, reference_engine, sd1, make_job, world, batch, cfg):
    executor = pools("sd1", world)
    job = make_job(batch=batch, cfg=cfg, steps=1 if world > 2 else 2)
    engine = Engine(executor, parallel="layersplit")
    result = engine.sample(sd1["unet"], job)
    assert engine.last_plan.strategy == "layersplit" and len(engine.last_plan.workers) == world
    assert_same(result, reference_engine.sample(sd1["unet"], job))
    rows = batch * (2 if cfg != 1.0 else 1)
    layouts = _pipelines(executor, world)
    assert all(min(layout["blocks_per_rank"]) > 0 for layout in layouts)
    _assert_overlapped(layouts, rows)


@pytest.mark.parametrize("world,batch", [(3, 3)])
def test_flux_pipeline_matches_single_device(pools, reference_engine, flux, world, batch):
    """Flux's cond and uncond run as separate calls (their contexts differ): a call has `batch` rows."""
    job = dit_job(flux, cfg=2.0, steps=1)
    if batch > 1:
        from diffmesh.sampling.noise import prepare_noise

        latent = torch.zeros(batch, *job.latent.shape[1:])
        job = dataclasses.replace(job, latent=latent, noise=prepare_noise(latent, 42, None))
    executor = pools("flux", world)
    result = Engine(executor, parallel="layersplit").sample(flux, job)
    assert_same(result, reference_engine.sample(flux, job))
    _assert_overlapped(_pipelines(executor, world), batch)


def test_one_row_and_the_override_run_serially(pools, reference_engine, sd1, make_job, monkeypatch):
    executor = pools("sd1", 2)
    job = make_job(batch=1, cfg=1.0, steps=1)                 # one row per call
    result = Engine(executor, parallel="layersplit").sample(sd1["unet"], job)
    assert_same(result, reference_engine.sample(sd1["unet"], job))
    for layout in _pipelines(executor, 2):
        assert layout["pipeline"]["last_call"] == {"rows": 1, "micro_batches": 1, "serial_because": "one row"}
        assert layout["activation_bytes_sent"] > 0            # the serial path's broadcasts ran
    monkeypatch.setenv(ENV, "1")                              # two rows, pipeline turned off
    job = make_job(batch=2, cfg=1.0, steps=1)
    result = Engine(executor, parallel="layersplit").sample(sd1["unet"], job)
    assert_same(result, reference_engine.sample(sd1["unet"], job))
    assert all(layout["pipeline"]["last_call"]["serial_because"] == f"{ENV}=1" for layout in _pipelines(executor, 2))


def test_micro_batch_count_and_rows():
    assert [micro_batch_count(r) for r in (1, 2, 5, 20)] == [1, 2, 5, 8]
    assert micro_batch_count(6, 2) == 2 and micro_batch_count(2, 5) == 2 and micro_batch_count(4, 1) == 1
    assert row_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    assert requested_micro_batches({ENV: "3"}) == 3 and requested_micro_batches({}) is None
    with pytest.raises(ConfigError) as info:
        requested_micro_batches({ENV: "many"})
    assert ENV in str(info.value) and "whole number" in str(info.value)


def test_one_micro_batch_computes_at_a_time():
    """The baton: however the threads are scheduled, two micro-batches never compute at once on a
    worker, and a micro-batch waiting for a partner lets another compute."""
    run = MicroBatchRun(3, 0, torch.device("cpu"))
    lock, active, most, log = threading.Lock(), [0], [0], []

    def compute(i: int, part: str) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        log.append((i, part))
        time.sleep(0.005)                     # room for another thread to (wrongly) start computing
        with lock:
            active[0] -= 1

    def fn(i: int) -> int:
        compute(i, "first range")
        with run.waiting():                   # as if waiting for another worker's block output
            time.sleep(0.01)
        compute(i, "last range")
        return i * 10
    assert run.run(fn) == [0, 10, 20]
    assert most[0] == 1 and len(log) == 6


def test_a_failed_micro_batch_fails_the_call_at_once():
    """A micro-batch that fails ends the call with its error while another still waits for a
    partner that will not send (that one is left to the group's timeout and then touches nothing)."""
    run = MicroBatchRun(2, 0, torch.device("cpu"))
    gate = threading.Event()

    def fn(i: int) -> int:
        if i == 0:
            with run.waiting():
                gate.wait(30)
            return 0
        raise RuntimeError("micro-batch 1 ran out of memory")
    try:
        with pytest.raises(RuntimeError, match="micro-batch 1 ran out of memory"):
            run.run(fn)
    finally:
        gate.set()

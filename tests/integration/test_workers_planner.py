"""Placement and planning are plain data: which worker runs what, and which strategy a job gets."""

from __future__ import annotations

import pickle

import pytest

from diffmesh.engine.placement import WorkerInfo, place, plan_placement, resolve_device, worker_labels
from diffmesh.engine.planner import Workload, plan_sample
from diffmesh.models.handle import ModelHandle
from diffmesh.parallel.batch import split_batch
from diffmesh.parallel.request import parallel_request, plain_handle, with_parallel_request
from diffmesh.parallel.queue import WorkerPool


def cpu_workers(n: int, speeds=None) -> list[WorkerInfo]:
    labels = worker_labels(["cpu"] * n)
    return [WorkerInfo(i, "cpu", labels[i], (speeds or [1.0] * n)[i]) for i in range(n)]


def test_cpu_workers_get_unique_labels_and_gpus_keep_their_names():
    assert worker_labels(["cpu", "cpu"]) == ["cpu:0", "cpu:1"]
    assert worker_labels(["cuda:0", "cuda:1", "cpu"]) == ["cuda:0", "cuda:1", "cpu"]


def test_unet_on_main_device_text_encoder_and_vae_on_the_other():
    plan = plan_placement(cpu_workers(2))
    assert (plan.unet, plan.clip, plan.vae) == (0, 1, 1)
    assert plan_placement(cpu_workers(1)).as_dict() == {"unet": 0, "clip": 0, "vae": 0}
    assert plan_placement(cpu_workers(2), default_device="cpu:1").unet == 1


def test_handle_device_overrides_placement_and_unknown_device_falls_back(caplog):
    workers = cpu_workers(2)
    plan = plan_placement(workers)
    vae = ModelHandle("/m.safetensors", "vae", "sd1")
    assert place(vae.with_options(device="cpu:0"), plan, workers) == 0
    assert place(vae.with_options(device="worker:0"), plan, workers) == 0
    assert place(vae.with_options(device="cuda:3"), plan, workers) == 1
    assert "cuda:3" in caplog.text
    assert resolve_device("1", [WorkerInfo(0, "cuda:1", "cuda:1"), WorkerInfo(1, "cuda:0", "cuda:0")]) == 0


def test_batch_split_is_proportional_to_speed_and_covers_every_row():
    assert split_batch(4, [1.0, 1.0]) == [(0, 2), (2, 4)]
    assert split_batch(6, [2.0, 1.0]) == [(0, 4), (4, 6)]
    assert split_batch(1, [1.0, 1.0]) == [(0, 1), (1, 1)]
    for total in range(0, 9):
        ranges = split_batch(total, [3.0, 1.0, 2.0])
        assert sum(b - a for a, b in ranges) == total and ranges[-1][1] == total


def test_planner_picks_batch_for_batches_and_cfg_for_one_image():
    two = cpu_workers(2)
    assert plan_sample(Workload(batch=4, cfg=7.0), two).strategy == "batch"
    assert plan_sample(Workload(batch=1, cfg=7.0), two).strategy == "cfg"
    assert plan_sample(Workload(batch=1, cfg=1.0), two).strategy == "single"
    assert plan_sample(Workload(batch=3, cfg=7.0), two).strategy == "cfg"       # 2:1 split loses to cfg
    assert plan_sample(Workload(batch=4, cfg=7.0), cpu_workers(1)).strategy == "single"


def test_planner_follows_the_requested_mode():
    two = cpu_workers(2)
    assert plan_sample(Workload(batch=4, cfg=7.0), two, "cfg").strategy == "cfg"
    assert plan_sample(Workload(batch=4, cfg=7.0), two, "none").strategy == "single"
    assert plan_sample(Workload(batch=4, cfg=7.0), two, "queue").strategy == "single"
    plan = plan_sample(Workload(batch=1, cfg=7.0), two, "batch")
    assert plan.strategy == "single" and "one sample" in plan.reason
    with pytest.raises(ValueError):
        plan_sample(Workload(batch=1, cfg=7.0), two, "fastest")


def test_unequal_workers_get_batch_rows_in_proportion_to_speed():
    plan = plan_sample(Workload(batch=6, cfg=7.0), cpu_workers(2, [1.0, 2.0]), "batch")
    assert plan.workers == (1, 0) and plan.ranges == ((0, 4), (4, 6))


def test_slow_partner_makes_cfg_parallel_not_worth_it():
    plan = plan_sample(Workload(batch=1, cfg=7.0), cpu_workers(2, [1.0, 0.3]))
    assert plan.strategy == "single" and plan.workers == (0,)


def test_parallel_request_rides_on_the_handle_but_never_reaches_workers():
    model = ModelHandle("/m.safetensors", "unet", "sd1")
    asked = with_parallel_request(model, "cfg").with_lora("/l.safetensors", 0.5)
    assert parallel_request(asked) == "cfg" and parallel_request(model) is None
    assert plain_handle(asked) == model.with_lora("/l.safetensors", 0.5)
    assert type(plain_handle(asked)) is ModelHandle
    assert asked.parallel == "cfg" and asked != plain_handle(asked)      # a plain field: part of equality
    assert pickle.loads(pickle.dumps(asked)) == asked and hash(asked) == hash(pickle.loads(pickle.dumps(asked)))


def test_worker_pool_leases_are_exclusive_and_released():
    pool = WorkerPool([0, 1])
    first = pool.take(1)
    second = pool.take(1)
    assert sorted(first + second) == [0, 1]
    assert pool.take(1, timeout=0.05) == []
    pool.give(first)
    assert pool.take(2, at_least=1) == first


def test_planner_never_splits_the_batch_of_a_batch_coupled_sampler():
    two = cpu_workers(2)
    coupled = Workload(batch=4, cfg=1.0, batch_coupled=True)
    assert plan_sample(Workload(batch=4, cfg=1.0), two).strategy == "batch"
    assert plan_sample(coupled, two).strategy == "single"
    plan = plan_sample(coupled, two, mode="batch")
    assert plan.strategy == "single" and "dpm_adaptive" in plan.reason

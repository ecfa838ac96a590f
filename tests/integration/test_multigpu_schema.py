"""The multi-GPU nodes as current ComfyUI defines them (names, inputs, defaults, device options),
and how their requests reach the planner (plain data, no workers needed)."""

from __future__ import annotations

import pytest

from diffmesh.config.paths import Paths
from diffmesh.engine.placement import WorkerInfo, worker_labels
from diffmesh.models.handle import ModelHandle
from diffmesh.nodes.devices import gpu_options, work_units
from diffmesh.nodes.registry import build_registry
from diffmesh.parallel.request import ParallelRequest, gpu_worker, parallel_options, parallel_request


def workers(devices: list[str], speeds=None) -> list[WorkerInfo]:
    labels = worker_labels(devices)
    return [WorkerInfo(i, d, labels[i], (speeds or [1.0] * len(devices))[i]) for i, d in enumerate(devices)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return Paths.build(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def info(paths):
    return build_registry().object_info(paths, ["cuda:0", "cuda:1", "cpu"])


def test_cfg_split_and_options_take_comfyuis_inputs(info):
    split = info["MultiGPU_WorkUnits"]
    assert split["display_name"] == "MultiGPU CFG Split" and split["category"] == "advanced/multigpu"
    assert split["input"]["required"] == {"model": ["MODEL"], "max_gpus": ["INT", {"default": 2, "min": 1, "step": 1}]}
    assert set(split["input"]["optional"]) == {"gpu_options", "strategy"}      # ours are optional
    options = info["MultiGPU_Options"]
    assert options["input"]["required"] == {"device_index": ["INT", {"default": 0, "min": 0, "max": 64}],
                                            "relative_speed": ["FLOAT", {"default": 1.0, "min": 0.0, "step": 0.01}]}
    assert options["input"]["optional"] == {"gpu_options": ["GPU_OPTIONS"]} and options["output"] == ["GPU_OPTIONS"]


def test_select_nodes_offer_default_cpu_and_gpu_n_and_the_vae_no_cpu(info, paths):
    model = info["SelectModelDevice"]["input"]["required"]["device"][0]
    assert model[:4] == ["default", "cpu", "gpu:0", "gpu:1"] and "cuda:1" in model
    assert info["SelectCLIPDevice"]["input"]["required"]["device"][0] == model
    assert "cpu" not in info["SelectVAEDevice"]["input"]["required"]["device"][0]
    one_gpu = build_registry().object_info(paths, ["cuda:0", "cpu"])["SelectModelDevice"]["input"]["required"]
    assert one_gpu["device"][0][:2] == ["default", "cpu"] and "gpu:0" not in one_gpu["device"][0]


def test_gpu_n_is_the_nth_accelerator_or_the_nth_cpu_stand_in():
    assert gpu_worker(1, workers(["cuda:0", "cuda:1", "cpu"])) == 1
    assert gpu_worker(0, workers(["cpu", "cuda:0"])) == 1
    assert gpu_worker(1, workers(["cpu", "cpu"])) == 1
    assert gpu_worker(2, workers(["cpu", "cpu"])) is None


def test_options_chain_and_a_later_entry_for_an_index_wins():
    (first,) = gpu_options(None, 0, 1.0)
    (chained,) = gpu_options(None, 1, 0.5, first)
    (again,) = gpu_options(None, 0, 2.0, chained)
    assert again == ((1, 0.5), (0, 2.0))


def test_work_units_request_carries_max_gpus_and_speeds_to_the_planner():
    model = ModelHandle("/m.safetensors", "unet", "sd1")
    (asked,) = work_units(None, model, max_gpus=2, gpu_options=((1, 3.0),))
    assert parallel_request(asked) == "cfg"
    request = parallel_options(asked)
    pool = request.workers_for(workers(["cpu", "cpu", "cpu"]), main_worker=2)
    assert [w.worker_id for w in pool] == [2, 1] and pool[1].speed == 3.0
    (alone,) = work_units(None, model, max_gpus=1)
    assert parallel_request(alone) == "none"
    assert parallel_options(model) is None
    assert parallel_options(model.__class__("/m.safetensors", "unet", "sd1", parallel="batch")) == ParallelRequest("batch")

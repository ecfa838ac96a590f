"""Multi-device nodes through the real runtime with `--cpu --workers 2`: same image as one worker."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from diffmesh.runtime import Runtime


def _runtime(models_base, tmp_path_factory, workers: int, parallel: str = "auto") -> Runtime:
    base = tmp_path_factory.mktemp(f"base{workers}")
    ns = argparse.Namespace(base_directory=str(base), models_dir=str(models_base / "models"), cpu=True,
                            workers=workers, parallel=parallel)
    return Runtime.build(ns)


@pytest.fixture(scope="module")
def one(models_base, tmp_path_factory):
    rt = _runtime(models_base, tmp_path_factory, 1)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def two(models_base, tmp_path_factory):
    rt = _runtime(models_base, tmp_path_factory, 2, parallel="none")
    yield rt
    rt.close()


def workflow(extra: dict | None = None, model=("4", 0), vae=("4", 2), seed: int = 21) -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1.0, "model": list(model),
                                                  "positive": ["6", 0], "negative": ["7", 0],
                                                  "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": list(vae)}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    prompt.update(extra or {})
    return prompt


def image(runtime: Runtime, prompt: dict) -> torch.Tensor:
    runtime.executor.reset_cache()
    result = runtime.executor.execute(prompt, "t", {}, None)
    assert result.status == "success", result.error or result.validation_error or result.node_errors
    return runtime.executor.cache.get("8").outputs[0][0]


def test_cpu_workers_flag_starts_one_thread_worker_processes(two):
    from diffmesh.executors.multiproc import MultiProcessExecutor

    assert isinstance(two.backend, MultiProcessExecutor)
    for worker in (0, 1):
        info = two.backend.worker_info(worker)
        assert info["threads"] == 1 and info["device"] == "cpu"
    assert [w["alive"] for w in two.engine.describe()["workers"]] == [True, True]


def test_two_workers_list_their_devices_for_the_device_combos(two):
    assert two.engine.device_names() == ["cpu:0", "cpu:1"]
    info = two.registry.object_info(two.paths, two.engine.device_names())
    # ComfyUI's options first (the two CPU workers stand in for gpu:0 and gpu:1), then diffmesh's names
    assert info["SelectModelDevice"]["input"]["required"]["device"][0] == [
        "default", "cpu", "gpu:0", "gpu:1", "cpu:0", "cpu:1"]
    assert info["SelectVAEDevice"]["input"]["required"]["device"][0] == ["default", "gpu:0", "gpu:1", "cpu:0", "cpu:1"]


def test_cfg_split_node_gives_the_image_of_one_worker(one, two):
    split = {"10": {"class_type": "MultiGPU_WorkUnits", "inputs": {"model": ["4", 0], "max_gpus": 2}}}
    got = image(two, workflow(split, model=("10", 0)))
    assert two.engine.last_plan.strategy == "cfg"
    torch.testing.assert_close(got, image(one, workflow()), rtol=1e-4, atol=1e-4)


def test_select_vae_device_moves_the_vae_and_an_unknown_device_passes_through(one, two, caplog):
    nodes = {"11": {"class_type": "SelectVAEDevice", "inputs": {"vae": ["4", 2], "device": "cpu:0"}},
             "12": {"class_type": "SelectModelDevice", "inputs": {"model": ["4", 0], "device": "cuda:7"}}}
    with caplog.at_level(logging.WARNING):
        got = image(two, workflow(nodes, model=("12", 0), vae=("11", 0)))
    assert "cuda:7" in caplog.text
    assert two.executor.cache.get("11").outputs[0][0].device == "cpu:0"
    assert two.engine.worker_for(two.executor.cache.get("11").outputs[0][0]) == 0
    torch.testing.assert_close(got, image(one, workflow()), rtol=1e-4, atol=1e-4)


def test_comfyui_gpu_options_place_models_on_the_nth_worker(one, two):
    nodes = {"11": {"class_type": "SelectVAEDevice", "inputs": {"vae": ["4", 2], "device": "gpu:0"}},
             "12": {"class_type": "SelectModelDevice", "inputs": {"model": ["4", 0], "device": "gpu:1"}}}
    got = image(two, workflow(nodes, model=("12", 0), vae=("11", 0)))
    assert two.engine.worker_for(two.executor.cache.get("11").outputs[0][0]) == 0
    assert two.engine.worker_for(two.executor.cache.get("12").outputs[0][0]) == 1
    torch.testing.assert_close(got, image(one, workflow()), rtol=1e-4, atol=1e-4)


def test_multigpu_options_speeds_split_the_batch_and_max_gpus_one_runs_single(one, two):
    batch4 = {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}}}
    nodes = {**batch4,
             "20": {"class_type": "MultiGPU_Options", "inputs": {"device_index": 0, "relative_speed": 1.0}},
             "21": {"class_type": "MultiGPU_Options", "inputs": {"device_index": 1, "relative_speed": 3.0,
                                                                 "gpu_options": ["20", 0]}},
             "10": {"class_type": "MultiGPU_WorkUnits", "inputs": {"model": ["4", 0], "max_gpus": 2,
                                                                  "gpu_options": ["21", 0], "strategy": "batch"}}}
    got = image(two, workflow(nodes, model=("10", 0)))
    plan = two.engine.last_plan
    assert plan.strategy == "batch"
    rows = {w: stop - start for w, (start, stop) in zip(plan.workers, plan.ranges)}
    assert rows == {0: 1, 1: 3}                     # in proportion to the speeds the nodes gave
    torch.testing.assert_close(got, image(one, workflow(batch4)), rtol=1e-4, atol=1e-4)
    single = {"10": {"class_type": "MultiGPU_WorkUnits", "inputs": {"model": ["4", 0], "max_gpus": 1}}}
    image(two, workflow(single, model=("10", 0)))
    assert two.engine.last_plan.strategy == "single"

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
    assert info["SelectVAEDevice"]["input"]["required"]["device"][0] == ["default", "cpu:0", "cpu:1"]


def test_cfg_split_node_gives_the_image_of_one_worker(one, two):
    split = {"10": {"class_type": "MultiGPU_WorkUnits", "inputs": {"model": ["4", 0], "strategy": "cfg"}}}
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

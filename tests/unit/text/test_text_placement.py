"""Text encoders go through the workers' memory managers like every component: the CLIPLoader
`device` input and SelectCLIPDevice choose the worker, and the result does not depend on it
(real runtime, `--cpu --workers 2`: two one-thread worker processes)."""

from __future__ import annotations

import argparse

import pytest
import torch

from diffmesh.nodes.base import NodeContext
from diffmesh.runtime import Runtime


@pytest.fixture(scope="module")
def two(te_base, tmp_path_factory):
    ns = argparse.Namespace(base_directory=str(tmp_path_factory.mktemp("base2")), models_dir=str(te_base / "models"),
                            cpu=True, workers=2, parallel="none")
    rt = Runtime.build(ns)
    yield rt
    rt.close()


def _ctx(rt) -> NodeContext:
    return NodeContext(engine=rt.engine, paths=rt.paths, node_id="1", prompt={}, extra_data={}, state={})


def _loaded(rt, worker_id: int) -> list[str]:
    stats = rt.backend.call(worker_id, "memory_stats").result(timeout=120)
    return [c["name"] for c in stats["components"] if c["component"] == "clip"]


def test_select_clip_device_runs_the_encoder_on_that_worker_with_the_same_result(two):
    labels = two.engine.device_names()
    assert len(labels) == 2
    (clip,) = two.registry["CLIPLoader"].execute(_ctx(two), clip_name="tiny-qwen_3_4b.safetensors", type="lumina2")
    results = []
    for worker_id, label in enumerate(labels):
        (placed,) = two.registry["SelectCLIPDevice"].execute(_ctx(two), clip=clip, device=label)
        assert two.engine.worker_for(placed) == worker_id
        (cond,) = two.registry["CLIPTextEncode"].execute(_ctx(two), text="a photo of a cat", clip=placed)
        results.append(cond[0][0])
        assert "clip:tiny-qwen_3_4b.safetensors" in _loaded(two, worker_id)
    assert torch.equal(results[0], results[1])

"""Batch x patch and CFG x patch (the UNet hybrids) give one device's final latent: the batch rows split
over groups of CPU worker processes, each group patch-splitting its rows' latent rows over its members
(4 workers, batch 2: two pairs; batch 3: 2 rows on one pair and 1 on the other; 3 workers, batch 2
at cfg 5: one worker alone and a pair), and cond / uncond on two patch-split pairs (4 workers, batch 1); a member killed mid-prompt: the job
reruns once on one worker.
Unequal group shares come from the planner's speeds (`Engine(speeds=...)`), not from slower workers."""

from __future__ import annotations

import pytest
import torch

from same import assert_same

from diffmesh.engine.engine import Engine, EngineScope
from diffmesh.models.handle import ModelHandle
from diffmesh.sampling.job import SampleJob


@pytest.fixture(scope="module")
def unet(tiny_models) -> ModelHandle:
    return ModelHandle(tiny_models["sd1"], "unet", "sd1")


@pytest.fixture(scope="module")
def sd1_job(reference_engine, tiny_models):
    """sd1_job(batch, cfg, sampler, steps, rows): tiny SD1 latents 8 columns wide, seed 42."""
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    clip = ModelHandle(tiny_models["sd1"], "clip", "sd1")
    positive = reference_engine.encode_text(clip, "a photo of a cat")
    negative = reference_engine.encode_text(clip, "blurry")

    def make(batch: int, cfg: float = 5.0, sampler: str = "euler_ancestral", steps: int = 2,
             rows: int = 24) -> SampleJob:
        latent = torch.zeros(batch, 4, rows, 8)
        sigmas = ksampler_sigmas(model_sampling_for("sd1"), "normal", sampler, steps, 1.0)
        return SampleJob(latent=latent, noise=prepare_noise(latent, 42, None), sigmas=sigmas, sampler_name=sampler,
                         cfg=cfg, positive=positive, negative=negative, seed=42)
    return make


def test_batch_of_two_on_four_workers_runs_two_patch_pairs(four_workers, reference_engine, unet, sd1_job):
    """--parallel patch, batch 2 on 4 workers: rows 0 on workers 0-1, row 1 on workers 2-3, each pair
    in bands of 24 latent rows (ancestral noise and cfg 5: the per-row noise and both passes)."""
    engine = Engine(four_workers, parallel="patch")
    job = sd1_job(batch=2)
    result = engine.sample(unet, job)
    plan = engine.last_plan
    assert plan.strategy == "batch_patch"
    assert plan.batch_groups() == [((0, 1), (0, 1)), ((1, 2), (2, 3))]
    assert_same(result, reference_engine.sample(unet, job))


def test_batch_of_three_goes_two_rows_to_the_faster_pair(four_workers, reference_engine, unet, sd1_job):
    """Workers 0-1 planned twice as fast as 2-3: rows 0-1 on the first pair, row 2 on the second."""
    engine = Engine(four_workers, parallel="patch", speeds={0: 2.0, 1: 2.0, 2: 1.0, 3: 1.0})
    job = sd1_job(batch=3, cfg=1.0)
    result = engine.sample(unet, job)
    plan = engine.last_plan
    assert plan.strategy == "batch_patch"
    assert plan.batch_groups() == [((0, 2), (0, 1)), ((2, 3), (2, 3))]
    assert_same(result, reference_engine.sample(unet, job))


def test_three_workers_one_alone_and_a_patch_pair(four_workers, reference_engine, unet, sd1_job):
    """3 workers, worker 0 planned twice as fast: row 0 whole on worker 0, row 1 in bands of 12 on 1-2."""
    engine = Engine(four_workers, parallel="patch", speeds={0: 2.0, 1: 1.0, 2: 1.0, 3: 1.0})
    job = sd1_job(batch=2)
    result = EngineScope(engine, [0, 1, 2]).sample(unet, job)
    plan = engine.last_plan
    assert plan.strategy == "batch_patch"
    assert plan.batch_groups() == [((0, 1), (0,)), ((1, 2), (1, 2))]
    assert_same(result, reference_engine.sample(unet, job))


def test_cfg_halves_each_patch_split_on_four_workers(four_workers, reference_engine, unet, sd1_job):
    """One image at cfg 5 on 4 workers: cond on workers 0-1, uncond on 2-3, each pair in bands."""
    engine = Engine(four_workers, parallel="patch")
    job = sd1_job(batch=1, sampler="dpmpp_2m")
    result = engine.sample(unet, job)
    assert engine.last_plan.strategy == "cfg_patch" and engine.last_plan.workers == (0, 1, 2, 3)
    assert_same(result, reference_engine.sample(unet, job))


def test_auto_takes_batch_patch_for_a_large_batch_of_two_and_batch_split_for_small_images(
        four_workers, reference_engine, unet, sd1_job):
    """auto on 4 workers, cfg 1: 64 latent rows (32 per band) -> two patch pairs; 16 rows -> plain batch split."""
    engine = Engine(four_workers, parallel="auto")
    big = sd1_job(batch=2, cfg=1.0, sampler="euler", steps=1, rows=64)
    result = engine.sample(unet, big)
    assert engine.last_plan.strategy == "batch_patch" and len(engine.last_plan.batch_groups()) == 2
    assert_same(result, reference_engine.sample(unet, big))
    small = sd1_job(batch=2, cfg=1.0, sampler="euler", steps=1, rows=16)
    assert_same(engine.sample(unet, small), reference_engine.sample(unet, small))
    assert engine.last_plan.strategy == "batch"


def test_a_member_killed_mid_prompt_the_job_reruns_once_on_one_worker(four_workers, reference_engine, unet,
                                                                      sd1_job):
    """Worker 3 (second pair) killed at step 2: its partner's exchange fails, every group is dropped and
    the whole job reruns on one live worker, giving the one-device latent; a later job opens fresh groups."""
    import os
    import signal

    engine = Engine(four_workers, parallel="patch")
    job = sd1_job(batch=2, cfg=1.0, sampler="euler", steps=12)
    pid = four_workers.call(3, "ping").result()["pid"]
    restarts = four_workers.restarts[3]
    events: list[tuple[int, str, int]] = []

    def progress(event: dict) -> None:
        events.append((event["worker"], event["strategy"], event["value"]))
        if event["strategy"] == "batch_patch" and event["value"] == 2 and four_workers.restarts[3] == restarts:
            os.kill(pid, signal.SIGKILL)

    result = engine.sample(unet, job, progress=progress)
    assert engine.last_plan.strategy == "batch_patch"
    assert four_workers.restarts[3] == restarts + 1
    assert events[-1][1:] == ("single", 12) and events[-1][0] != 3          # the rerun ran every step
    assert_same(result, reference_engine.sample(unet, job))

"""Every parallel strategy gives the latent (and image) of one device: tiny SD1, CPU workers."""

from __future__ import annotations

import threading

import pytest
import torch

from same import assert_same

from diffmesh.engine.engine import Engine
from diffmesh.parallel.request import with_parallel_request


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_batch_parallel_matches_single_device(backend_workers, reference_engine, sd1, make_job, sampler):
    job = make_job(batch=4, sampler=sampler)
    engine = Engine(backend_workers, parallel="batch")
    result = engine.sample(sd1["unet"], job)
    assert engine.last_plan.strategy == "batch" and engine.last_plan.ranges == ((0, 2), (2, 4))
    assert_same(result, reference_engine.sample(sd1["unet"], job))


def test_uneven_batch_split_by_speed_matches_single_device(backend_workers, reference_engine, sd1, make_job):
    job = make_job(batch=3, sampler="euler_ancestral", seed=7)
    engine = Engine(backend_workers, parallel="batch", speeds={0: 0.5, 1: 1.0})
    result = engine.sample(sd1["unet"], job)
    assert engine.last_plan.workers == (1, 0) and engine.last_plan.ranges == ((0, 2), (2, 3))
    assert_same(result, reference_engine.sample(sd1["unet"], job))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_cfg_parallel_matches_single_device(backend_workers, reference_engine, sd1, make_job, sampler):
    job = make_job(batch=1, cfg=6.5, sampler=sampler, steps=4)
    engine = Engine(backend_workers, parallel="cfg")
    result = engine.sample(sd1["unet"], job)
    assert engine.last_plan.strategy == "cfg"
    assert_same(result, reference_engine.sample(sd1["unet"], job))


def test_cfg_split_node_request_overrides_the_flag(backend_workers, reference_engine, sd1, make_job):
    job = make_job(batch=2, cfg=5.0, seed=3)
    engine = Engine(backend_workers, parallel="none")
    result = engine.sample(with_parallel_request(sd1["unet"], "cfg"), job)
    assert engine.last_plan.strategy == "cfg"
    assert_same(result, reference_engine.sample(sd1["unet"], job))


def test_auto_plan_picks_a_strategy_that_matches_single_device(backend_workers, reference_engine, sd1, make_job):
    engine = Engine(backend_workers, parallel="auto")
    for batch, expected in ((1, "cfg"), (2, "batch")):
        job = make_job(batch=batch, seed=11)
        result = engine.sample(sd1["unet"], job)
        assert engine.last_plan.strategy == expected
        assert_same(result, reference_engine.sample(sd1["unet"], job))


def _whole_prompt(engine, sd1, job_maker, seed):
    positive = engine.encode_text(sd1["clip"], "a photo of a cat")
    job = job_maker(batch=1, seed=seed)
    assert torch.equal(positive[0][0], job.positive[0][0])
    latent = engine.sample(sd1["unet"], job)
    return engine.vae_decode(sd1["vae"], latent)


def test_queue_parallel_runs_prompts_concurrently_one_per_worker(backend_workers, reference_engine, sd1, make_job):
    engine = Engine(backend_workers, parallel="queue")
    leases = [engine.acquire(pending=2), engine.acquire(pending=2)]
    assert sorted(w for lease in leases for w in lease.worker_ids) == [0, 1]
    assert engine.acquire(pending=2, timeout=0.05) is None          # both busy
    images: dict[int, torch.Tensor] = {}

    def run(lease, seed):
        with lease:
            images[seed] = _whole_prompt(lease.engine, sd1, make_job, seed)

    threads = [threading.Thread(target=run, args=(lease, seed)) for lease, seed in zip(leases, (5, 6))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(engine.pool.free()) == [0, 1]
    for seed in (5, 6):
        torch.testing.assert_close(images[seed], _whole_prompt(reference_engine, sd1, make_job, seed),
                                   rtol=1e-4, atol=1e-4)


def test_placement_runs_text_encoder_and_vae_on_the_second_worker(backend_workers, reference_engine, sd1, make_job):
    engine = Engine(backend_workers, parallel="none")
    assert engine.describe()["placement"] == {"unet": "cpu:0", "clip": "cpu:1", "vae": "cpu:1"}
    image = _whole_prompt(engine, sd1, make_job, 9)
    torch.testing.assert_close(image, _whole_prompt(reference_engine, sd1, make_job, 9), rtol=1e-4, atol=1e-4)
    vae_on_0 = sd1["vae"].with_options(device="cpu:0")
    assert engine.worker_for(vae_on_0) == 0


def test_vae_batch_split_over_workers_matches_single_device(backend_workers, reference_engine, sd1):
    engine = Engine(backend_workers, parallel="auto")
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    assert engine._vae_parts(sd1["vae"], 3) == [(1, 0, 2), (0, 2, 3)]
    images = engine.vae_decode(sd1["vae"], latents)
    torch.testing.assert_close(images, reference_engine.vae_decode(sd1["vae"], latents), rtol=1e-4, atol=1e-5)
    encoded = engine.vae_encode(sd1["vae"], images)
    torch.testing.assert_close(encoded, reference_engine.vae_encode(sd1["vae"], images), rtol=1e-4, atol=1e-4)

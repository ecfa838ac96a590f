"""Faults with real models: a worker killed mid-sample, an interrupt during CFG parallel.

The op still completes once (the engine retries it on a live worker), the result equals a
one-device run, and the executor keeps serving (the dead worker is replaced).
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from diffmesh.engine.engine import Engine
from diffmesh.errors import InterruptedError_
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.models.handle import ModelHandle
from diffmesh.sampling.job import SampleJob

STEPS = 30


@pytest.fixture(scope="module")
def job_and_reference(tiny_models, unet):
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    executor = InProcessExecutor([WorkerSpec(worker_id=0, device="cpu", threads=1)])
    executor.start()
    engine = Engine(executor)
    clip = ModelHandle(tiny_models["sd1"], "clip", "sd1")
    latent = torch.zeros(1, 4, 16, 16)
    job = SampleJob(latent=latent, noise=prepare_noise(latent, 5, None),
                    sigmas=ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", STEPS, 1.0),
                    sampler_name="euler", cfg=7.0, positive=engine.encode_text(clip, "a cat"),
                    negative=engine.encode_text(clip, ""), seed=5)
    reference = engine.sample(unet, job)
    executor.shutdown()
    return job, reference


def _kill_at_step(executor, worker_id: int, step: int, events: list):
    def on_event(event: dict) -> None:
        events.append(event)
        if event["value"] == step and len([e for e in events if e["value"] == step]) == 1:
            os.kill(executor.pid(worker_id), signal.SIGKILL)
    return on_event


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_killed_worker_mid_sample_is_retried_once_on_a_live_worker(two_processes, unet, job_and_reference):
    job, reference = job_and_reference
    engine = Engine(two_processes, parallel="none")
    old_pid, events = two_processes.pid(0), []
    result = engine.sample(unet, job, _kill_at_step(two_processes, 0, 3, events))
    assert _relative(result, reference) < 1e-5
    assert events[-1]["value"] == STEPS and events[-1]["worker"] == 1      # finished on the live worker
    assert two_processes.call(0, "ping").result(timeout=60)["pid"] != old_pid    # replaced, serving again
    assert engine.describe()["workers"][0]["restarts"] >= 1


def test_worker_killed_during_cfg_parallel_still_completes_the_job_once(two_processes, unet, job_and_reference):
    job, reference = job_and_reference
    engine = Engine(two_processes, parallel="cfg")
    two_processes.call(1, "ping").result(timeout=60)
    events: list = []
    result = engine.sample(unet, job, _kill_at_step(two_processes, 1, 3, events))
    assert _relative(result, reference) < 1e-5
    assert events[-1]["strategy"] == "single" and events[-1]["value"] == STEPS
    two_processes.call(1, "ping").result(timeout=60)
    again = engine.sample(unet, job)                    # a fresh gloo pair with the replacement
    assert engine.last_plan.strategy == "cfg" and _relative(again, reference) < 1e-5


def test_worker_killed_during_batch_parallel_has_its_rows_redone_once(two_processes, unet, job_and_reference):
    job, _ = job_and_reference
    from dataclasses import replace

    batch = replace(job, latent=job.latent.repeat(2, 1, 1, 1), noise=torch.cat([job.noise, -job.noise]))
    reference = Engine(two_processes, parallel="none").sample(unet, batch)
    engine = Engine(two_processes, parallel="batch")
    two_processes.call(0, "ping").result(timeout=60)
    old_pid, events = two_processes.pid(0), []
    result = engine.sample(unet, batch, _kill_at_step(two_processes, 0, 3, events))
    assert engine.last_plan.ranges == ((0, 1), (1, 2))
    assert _relative(result, reference) < 1e-5
    assert two_processes.call(0, "ping").result(timeout=60)["pid"] != old_pid


def test_interrupt_stops_both_cfg_halves_and_the_pair_stays_usable(two_processes, unet, job_and_reference):
    job, reference = job_and_reference
    engine = Engine(two_processes, parallel="cfg")

    def interrupt_at_step_2(event: dict) -> None:
        if event["value"] == 2:
            engine.interrupt()
    with pytest.raises(InterruptedError_):
        engine.sample(unet, job, interrupt_at_step_2)
    assert not two_processes.busy(0) and not two_processes.busy(1)
    assert _relative(engine.sample(unet, job), reference) < 1e-5

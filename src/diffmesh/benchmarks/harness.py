"""Benchmark plumbing: start a worker setup, build jobs as the KSampler node does, time prompts.

A `Setup` is N workers of one kind (`cpu` with a thread budget each, or `cuda:i`), started as
worker processes (the multiproc executor) so 1-worker and N-worker runs differ only in count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from diffmesh.engine.engine import Engine
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.models.handle import ModelHandle
from diffmesh.sampling.job import SampleJob


@dataclass(frozen=True)
class Workload:
    """One prompt: txt2img at `size`², `steps` steps of `sampler`, guidance `cfg`."""

    checkpoint: str
    family: str = "sd1"
    size: int = 256
    steps: int = 4
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    positive: str = "a photo of a cat sitting on a wooden table"
    negative: str = "blurry, low quality"

    def handles(self) -> dict[str, ModelHandle]:
        return {c: ModelHandle(self.checkpoint, c, self.family) for c in ("unet", "clip", "vae")}


@dataclass
class Setup:
    """Started workers plus an engine over them."""

    name: str
    devices: list[str]
    threads: int | None
    parallel: str = "auto"
    executor: MultiProcessExecutor | None = None
    engine: Engine | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> "Setup":
        specs = [WorkerSpec(worker_id=i, device=d, threads=self.threads) for i, d in enumerate(self.devices)]
        self.executor = MultiProcessExecutor(specs, start_timeout=300)
        start = time.perf_counter()
        self.executor.start()
        self.engine = Engine(self.executor, parallel=self.parallel)
        self.info = {"workers": len(specs), "devices": self.devices, "threads_per_worker": self.threads,
                     "start_s": round(time.perf_counter() - start, 2)}
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(timeout=10)


def make_job(engine, work: Workload, batch: int, seed: int, conds: tuple | None = None) -> SampleJob:
    """A fully specified job, exactly as `KSampler` builds it on the graph side."""
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    handles = work.handles()
    if conds is None:
        conds = (engine.encode_text(handles["clip"], work.positive), engine.encode_text(handles["clip"], work.negative))
    latent = torch.zeros(batch, 4, work.size // 8, work.size // 8)                  # (B,4,h,w)
    sigmas = ksampler_sigmas(model_sampling_for(work.family), work.scheduler, work.sampler, work.steps, 1.0)
    return SampleJob(latent=latent, noise=prepare_noise(latent, seed, None), sigmas=sigmas,
                     sampler_name=work.sampler, cfg=work.cfg, positive=conds[0], negative=conds[1], seed=seed)


class StepClock:
    """Progress listener that records when each sampler step ended."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, event: dict) -> None:
        if event.get("type", "progress") == "progress":
            self.times.append(time.perf_counter())

    def per_step(self) -> float | None:
        """Mean step time after the first step (the first includes loading and warm-up effects)."""
        if len(self.times) < 2:
            return None
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def run_prompt(engine, work: Workload, seed: int, batch: int = 1) -> dict[str, float]:
    """encode -> sample -> decode, as a txt2img workflow does; returns timings in seconds."""
    handles = work.handles()
    t0 = time.perf_counter()
    job = make_job(engine, work, batch, seed)
    t1 = time.perf_counter()
    clock = StepClock()
    latent = engine.sample(handles["unet"], job, clock)
    t2 = time.perf_counter()
    engine.vae_decode(handles["vae"], latent)
    t3 = time.perf_counter()
    return {"encode_s": t1 - t0, "sample_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0,
            "step_s": clock.per_step() or (t2 - t1) / work.steps}


def warm_up(setup: Setup, work: Workload) -> float:
    """Load every component on every worker (one tiny prompt each), so timings exclude loading."""
    start = time.perf_counter()
    small = Workload(**{**work.__dict__, "steps": 1})
    engine = setup.engine
    leases = [engine.acquire(pending=len(engine.infos)) for _ in engine.infos]
    import threading

    def one(lease):
        with lease:
            run_prompt(lease.engine, small, seed=0)
    threads = [threading.Thread(target=one, args=(lease,)) for lease in leases if lease is not None]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # and the placement split (text encoder and VAE on the second worker)
    run_prompt(engine, small, seed=0)
    return time.perf_counter() - start

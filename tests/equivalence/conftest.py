"""Fixtures for strategy-equivalence tests: one in-process reference worker, two CPU worker
processes (one thread each), tiny SD1 handles and fully specified sampling jobs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from diffmesh.engine.engine import Engine
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.models.handle import ModelHandle
from diffmesh.sampling.job import SampleJob


@pytest.fixture(scope="session")
def reference_engine():
    """One device, in this process: what every strategy must equal."""
    executor = InProcessExecutor([WorkerSpec(worker_id=0, device="cpu", threads=1)])
    executor.start()
    yield Engine(executor, parallel="none")
    executor.shutdown()


def _cpu_workers(count: int, start_timeout: float):
    """`count` CPU worker processes with one torch thread each, shut down after the fixture's scope."""
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(count)],
                                    start_timeout=start_timeout)
    executor.start()
    yield executor
    executor.shutdown(timeout=5)


@pytest.fixture(scope="session")
def two_workers():
    """Two CPU worker processes with one torch thread each (`--cpu --workers 2`)."""
    yield from _cpu_workers(2, 120)


@pytest.fixture(scope="module")
def three_workers():
    """Three CPU worker processes with one torch thread each: uneven splits (sequence, patch)."""
    yield from _cpu_workers(3, 120)


@pytest.fixture(scope="module")
def four_workers():
    """Four CPU worker processes with one torch thread each: the hybrids (cfg x sequence, batch x patch)."""
    yield from _cpu_workers(4, 180)


@pytest.fixture(scope="session", params=["inproc", "multiproc", "ray"])
def backend_workers(request, two_workers, tmp_path_factory):
    """Two one-thread CPU workers behind each executor backend: in this process (threads), child
    processes, and Ray actors on a local two-node cluster (127.0.0.2 and 127.0.0.3, token auth)."""
    specs = [WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(2)]
    if request.param == "multiproc":
        yield two_workers
    elif request.param == "inproc":
        executor = InProcessExecutor(specs)
        executor.start()
        yield executor
        executor.shutdown()
    else:
        if importlib.util.find_spec("ray") is None:
            pytest.skip("the Ray executor needs the `ray` extra")
        from raycluster import driver_env, ray_cluster
        from diffmesh.executors.ray_actors import RayExecutor

        # the token must be in the environment before this process first uses Ray: Ray caches it
        # the second node has a models folder of its own, empty: model files must travel to it through Ray
        node_dir = tmp_path_factory.mktemp("ray-node")
        node_env = {"DIFFMESH_NODE_MODELS": str(node_dir / "models"), "DIFFMESH_NODE_CACHE": str(node_dir / "cache")}
        (node_dir / "models").mkdir()
        with ray_cluster(node_env=node_env) as (address, env), driver_env(env):
            executor = RayExecutor(specs, address=address)
            executor.start()
            try:
                yield executor
            finally:
                executor.shutdown()


@pytest.fixture(scope="session")
def sd1(tiny_models) -> dict[str, ModelHandle]:
    path = tiny_models["sd1"]
    return {c: ModelHandle(path, c, "sd1") for c in ("unet", "clip", "vae")}


@pytest.fixture(scope="session")
def make_job(reference_engine, sd1):
    """make_job(batch, cfg, sampler, seed, steps, size) -> SampleJob, built as the KSampler node builds it."""
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    positive = reference_engine.encode_text(sd1["clip"], "a photo of a cat")
    negative = reference_engine.encode_text(sd1["clip"], "blurry")

    def make(batch: int = 1, cfg: float = 7.0, sampler: str = "euler", seed: int = 42, steps: int = 3,
             size: int = 64) -> SampleJob:
        latent = torch.zeros(batch, 4, size // 8, size // 8)
        sigmas = ksampler_sigmas(model_sampling_for("sd1"), "normal", sampler, steps, 1.0)
        return SampleJob(latent=latent, noise=prepare_noise(latent, seed, None), sigmas=sigmas,
                         sampler_name=sampler, cfg=cfg, positive=positive, negative=negative, seed=seed)
    return make


"""What only the Ray executor does: workers on two nodes, model files sent to a node that lacks them,
and an actor killed mid-prompt (two-node local cluster from `backend_workers`; the other backends skip)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from diffmesh.engine.engine import Engine


@pytest.fixture()
def ray_workers(backend_workers):
    if type(backend_workers).__name__ != "RayExecutor":
        pytest.skip("Ray executor only")
    return backend_workers


def test_workers_are_placed_on_both_nodes_and_listed(ray_workers):
    info = ray_workers.describe()
    assert sorted(n["address"] for n in info["nodes"] if n["alive"]) == ["127.0.0.2", "127.0.0.3"]
    assert sorted(w["node_ip"] for w in info["workers"]) == ["127.0.0.2", "127.0.0.3"]
    assert Engine(ray_workers).describe()["cluster"]["workers"] == info["workers"]     # /system_stats shows it


def test_a_node_without_the_model_file_gets_it_through_the_object_store(ray_workers, sd1):
    """The second node was started with an empty models folder of its own (DIFFMESH_NODE_MODELS), so
    the checkpoint's bytes must reach it through Ray; the first node reads the server's own path."""
    engine = Engine(ray_workers, parallel="none")
    node3 = next(w for w, i in ray_workers._info.items() if i["node_ip"] == "127.0.0.3")
    engine.root.executor.call(node3, "encode_text", sd1["clip"], "a cat").result()
    infos = {w: ray_workers.worker_info(w) for w in ray_workers.worker_ids()}
    received = {infos[w]["node_ip"]: infos[w]["received_files"] for w in infos}
    assert received["127.0.0.3"] == [os.path.basename(sd1["clip"].path)]
    assert received["127.0.0.2"] == []


def test_an_actor_killed_mid_prompt_the_prompt_completes_once_with_the_undisturbed_latent(
        ray_workers, reference_engine, sd1, make_job):
    job = make_job(batch=1, cfg=6.0, sampler="euler", steps=12, seed=21)
    expected = reference_engine.sample(sd1["unet"], job)
    engine = Engine(ray_workers, parallel="none")
    victim = engine.worker_for(sd1["unet"])
    pid = ray_workers.worker_info(victim)["pid"]
    restarts_before = ray_workers.restarts[victim]
    steps: list[tuple[int, int]] = []

    def progress(event: dict) -> None:
        steps.append((event["worker"], event["value"]))
        if event["worker"] == victim and event["value"] == 3 and pid is not None:
            os.kill(pid, signal.SIGKILL)

    result = engine.sample(sd1["unet"], job, progress=progress)
    assert ray_workers.restarts[victim] == restarts_before + 1
    assert any(w == victim and s == 3 for w, s in steps)                 # it did die mid-prompt
    assert steps[-1][1] == 12                                              # the retry ran every step
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
    assert ray_workers.worker_info(victim)["pid"] not in (None, pid)       # Ray restarted the actor


def _kill_node(gcs_address: str, node_ip: str) -> int:
    """SIGKILL one node of the cluster at `gcs_address`: its raylet and every process under it."""
    import psutil

    killed = 0
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if any(a.endswith("/raylet") for a in args[:1]) and f"--gcs-address={gcs_address}" in args \
                and f"--node_ip_address={node_ip}" in args:
            for child in proc.children(recursive=True) + [proc]:
                try:
                    child.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
    return killed


def test_a_node_lost_mid_prompt_its_work_runs_again_on_the_other_node(reference_engine, sd1, make_job):
    """A cluster of its own (the shared one must survive): the node holding the sampling worker is
    killed whole (raylet and workers) at step 3; the step runs again on the surviving node."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray executor needs the `ray` extra")
    from raycluster import driver_env, ray_cluster

    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.ray_actors import RayExecutor

    job = make_job(batch=1, cfg=6.0, sampler="euler", steps=12, seed=23)
    expected = reference_engine.sample(sd1["unet"], job)
    with ray_cluster() as (address, env), driver_env(env):
        executor = RayExecutor([WorkerSpec(i, "cpu", 1) for i in range(2)], address=address, probe_timeout_s=10.0)
        executor.start()
        try:
            victim = next(w for w, i in executor._info.items() if i["node_ip"] == "127.0.0.3")
            survivor = 1 - victim
            engine = Engine(executor, parallel="none")
            seen: list[tuple[int, int]] = []

            def progress(event: dict) -> None:
                seen.append((event["worker"], event["value"]))
                if event["worker"] == victim and event["value"] == 3:
                    assert _kill_node(address, "127.0.0.3") > 0

            result = engine.sample(sd1["unet"].with_options(device=f"cpu:{victim}"), job, progress=progress)
            torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
            assert (victim, 3) in seen and seen[-1] == (survivor, 12)       # died mid-prompt, finished elsewhere
            assert not executor.is_alive(victim) and executor.is_alive(survivor)
            deadline = time.monotonic() + 120          # Ray's health checks mark the node dead in ~30 s
            while time.monotonic() < deadline:
                alive = {n["address"]: n["alive"] for n in executor.describe()["nodes"]}
                if not alive["127.0.0.3"]:
                    break
                time.sleep(2.0)
            assert alive == {"127.0.0.2": True, "127.0.0.3": False}
        finally:
            executor.shutdown()

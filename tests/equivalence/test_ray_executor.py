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
    deadline = time.monotonic() + 180             # Ray restarts the actor (slowly on a loaded machine)
    while not ray_workers.worker_info(victim).get("pid") and time.monotonic() < deadline:
        time.sleep(2.0)
    assert ray_workers.worker_info(victim).get("pid") not in (None, pid)


def test_a_node_lost_mid_prompt_its_work_runs_again_on_the_other_node(reference_engine, sd1, make_job, tmp_path):
    """A cluster of its own, driven from a child process (a process holds one Ray driver connection,
    and the shared cluster must survive): the node holding the sampling worker is killed whole
    (raylet and workers) at step 3; the step runs again on the surviving node (`ray_node_loss.py`)."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("ray") is None:
        pytest.skip("the Ray executor needs the `ray` extra")
    job = make_job(batch=1, cfg=6.0, sampler="euler", steps=12, seed=23)
    torch.save({"job": job, "unet": sd1["unet"]}, tmp_path / "job.pt")
    script = Path(__file__).with_name("ray_node_loss.py")
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                             str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    victim, survivor = report["victim"], 1 - report["victim"]
    assert [victim, 3] in report["seen"] and report["seen"][-1] == [survivor, 12]   # died mid-prompt, done elsewhere
    assert report["victim_alive"] is False and report["survivor_alive"] is True
    assert report["nodes_alive"] == {"127.0.0.2": True, "127.0.0.3": False}
    torch.testing.assert_close(torch.load(tmp_path / "result.pt"), reference_engine.sample(sd1["unet"], job),
                               rtol=1e-5, atol=1e-6)


def test_doctor_lists_every_node_of_the_cluster(ray_workers):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "diffmesh.cli", "doctor", "--json", "--no-bandwidth",
                          "--ray-address", ray_workers.address], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cluster = json.loads(out.stdout)["ray_cluster"]
    assert sorted((n["address"], n["alive"], n["cpus"]) for n in cluster["nodes"]) == \
        [("127.0.0.2", True, 1.0), ("127.0.0.3", True, 1.0)]

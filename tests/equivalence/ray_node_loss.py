"""Child process of test_ray_executor's node-loss test: a two-node Ray cluster of its own, the sampling
worker's node killed whole at step 3, the job finished by the engine on the other node.
    python ray_node_loss.py FOLDER      (reads FOLDER/job.pt; writes result.pt and report.json)"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import torch

from raycluster import driver_env, ray_cluster


def kill_node(gcs_address: str, node_ip: str) -> int:
    """SIGKILL one node of the cluster at `gcs_address`: its raylet and every process under it."""
    killed = 0
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if args and args[0].endswith("/raylet") and f"--gcs-address={gcs_address}" in args \
                and f"--node_ip_address={node_ip}" in args:
            for victim in proc.children(recursive=True) + [proc]:
                try:
                    victim.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
    return killed


def main(folder: Path) -> int:
    from diffmesh.engine.engine import Engine
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.ray_actors import RayExecutor

    saved = torch.load(folder / "job.pt", weights_only=False)
    with ray_cluster() as (address, env), driver_env(env):
        executor = RayExecutor([WorkerSpec(i, "cpu", 1) for i in range(2)], address=address, probe_timeout_s=10.0)
        executor.start()
        try:
            victim = next(w for w, i in executor._info.items() if i["node_ip"] == "127.0.0.3")
            engine = Engine(executor, parallel="none")
            seen: list[tuple[int, int]] = []

            def progress(event: dict) -> None:
                seen.append((event["worker"], event["value"]))
                if event["worker"] == victim and event["value"] == 3 and kill_node(address, "127.0.0.3") == 0:
                    raise RuntimeError("no process of node 127.0.0.3 found")

            result = engine.sample(saved["unet"].with_options(device=f"cpu:{victim}"), saved["job"], progress=progress)
            deadline = time.monotonic() + 120          # Ray's health checks mark the node dead in ~30 s
            while time.monotonic() < deadline:
                alive = {n["address"]: n["alive"] for n in executor.describe()["nodes"]}
                if not alive.get("127.0.0.3", True):
                    break
                time.sleep(2.0)
            torch.save(result, folder / "result.pt")
            (folder / "report.json").write_text(json.dumps({
                "victim": victim, "seen": seen, "nodes_alive": alive, "victim_alive": executor.is_alive(victim),
                "survivor_alive": executor.is_alive(1 - victim)}))
        finally:
            executor.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))

"""A local two-node Ray cluster for tests: two `ray start --block` processes on distinct loopback
addresses (head on 127.0.0.2, a second node on 127.0.0.3), token authentication on, each with its
own temp folder. Only the processes started here are stopped (never `ray stop`, which would take
down any other Ray on the machine)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ray_bin() -> str:
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


@contextmanager
def ray_cluster(cpus_per_node: int = 1, node_env: dict[str, str] | None = None, start_timeout: float = 240.0):
    """Yield (address, env): the head's GCS address and the environment a driver needs (the token).
    `node_env` goes to the second node only (e.g. its own models folder)."""
    token = secrets.token_hex(32)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    port = _free_port(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    # Ray's session folders live under /tmp/ray by default; a short private folder keeps socket paths short
    temp_dir = Path(tempfile.mkdtemp(prefix="dmray-"))
    common = ["--block", f"--num-cpus={cpus_per_node}", "--num-gpus=0", "--disable-usage-stats"]
    procs = []
    try:
        procs.append(_start_node(["--head", f"--node-ip-address={HEAD_IP}", f"--port={port}",
                                  "--include-dashboard=false", f"--temp-dir={temp_dir}", *common],
                                 env, temp_dir / "head.log", address, 1, start_timeout))
        procs.append(_start_node([f"--address={address}", f"--node-ip-address={NODE_IP}", *common],
                                 {**env, **(node_env or {})}, temp_dir / "node.log", address, 2, start_timeout))
        yield address, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start_node(args: list[str], env: dict, log_path: Path, address: str, count: int, timeout: float,
                attempts: int = 3) -> subprocess.Popen:
    """Start one node and wait until the cluster has `count` nodes. `ray start` gives a raylet 30 s
    (fixed in Ray) to register; on a loaded 2-core machine that can pass, so a node that exits
    during start-up is started again (at most `attempts` times)."""
    for attempt in range(attempts):
        proc = _start(args, env, log_path)
        try:
            _wait_for_nodes(address, env, count, timeout, proc)
            return proc
        except RuntimeError:
            _stop(proc)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _start(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([_ray_bin(), "start", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    proc.log_path = log_path
    return proc


def _wait_for_nodes(address: str, env: dict, count: int, timeout: float, proc: subprocess.Popen) -> None:
    """Poll the cluster's node list through a short-lived driver until `count` nodes are alive."""
    probe = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"`ray start` exited with code {proc.returncode}:\n{tail}")
        out = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True,
                             timeout=timeout)
        lines = out.stdout.strip().splitlines()
        if out.returncode == 0 and lines and lines[-1].isdigit() and int(lines[-1]) >= count:
            return
        time.sleep(2.0)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the `ray start --block` process group (it stops its raylet and GCS), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def driver_env(extra: dict[str, str]):
    """Set the token variables in this process for the driver's `ray.init`, restore them after."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

"""A worker process killed mid-prompt: the prompt still completes once, with the image an
undisturbed run gives, and the server stays up (issue: multi-device execution)."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import numpy as np
import psutil
from PIL import Image
from serverproc import wait_for_history
from test_server_e2e import txt2img as server_e2e_txt2img
from websocket import create_connection


def txt2img(seed: int, prefix: str, steps: int = 40) -> dict:
    prompt = server_e2e_txt2img(seed=seed, steps=steps)
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    return prompt


def worker_processes(server_pid: int) -> list[psutil.Process]:
    """The worker children of the server (spawned Python processes)."""
    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def busiest(processes: list[psutil.Process]) -> psutil.Process:
    for p in processes:
        p.cpu_percent(None)
    time.sleep(0.3)
    return max(processes, key=lambda p: p.cpu_percent(None))


def image_of(http, entry: dict) -> np.ndarray:
    item = entry["outputs"]["9"]["images"][0]
    data = http.get("/view", params=item).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_worker_killed_mid_prompt_the_prompt_completes_once_and_the_server_stays_up(tmp_path, start_server):
    with start_server(tmp_path / "base", "--cpu", "--workers", "2") as server, server.client() as http:
        server.wait_ready()
        ws = create_connection(f"{server.ws_url}?clientId=killer", timeout=120)
        ws.recv()  # status with sid
        prompt_id = http.post("/prompt", json={"prompt": txt2img(5, "killed"), "client_id": "killer"}).json()["prompt_id"]
        while True:  # wait until the sampler is running
            message = ws.recv()
            if isinstance(message, str):
                event = json.loads(message)
                if event["type"] == "progress" and event["data"]["prompt_id"] == prompt_id:
                    break
        victim = busiest(worker_processes(server.proc.pid))
        os.kill(victim.pid, signal.SIGKILL)
        ws.close()

        entry = wait_for_history(http, prompt_id, timeout=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        history = http.get("/history").json()
        assert list(history).count(prompt_id) == 1
        assert len(history) == 1

        # The server is up and its workers were replaced: an undisturbed run of the same seed gives
        # the same image.
        again = http.post("/prompt", json={"prompt": txt2img(5, "undisturbed")}).json()["prompt_id"]
        reference = wait_for_history(http, again, timeout=300)
        assert reference["status"]["status_str"] == "success"
        assert np.array_equal(image_of(http, entry), image_of(http, reference))
        assert victim.pid not in [p.pid for p in worker_processes(server.proc.pid)]
        assert len(worker_processes(server.proc.pid)) == 2

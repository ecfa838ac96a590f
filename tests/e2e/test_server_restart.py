"""Prompts survive a hard kill: queued and running prompts run after a restart on the same user
directory, and each one completes once and only once; each history entry names its own image, and
what the prompt cut off by the kill had written stays beside its re-run's file, never overwritten."""

from __future__ import annotations

import json
import time

import pytest
from serverproc import ServerProcess, wait_for_history
from test_server_e2e import txt2img

COUNT = 6


def _server(base, models_base) -> ServerProcess:
    return ServerProcess(base, "--models-dir", str(models_base / "models"))


def test_killed_server_runs_every_queued_prompt_once_after_restart(models_base, tmp_path):
    base = tmp_path / "base"
    first = _server(base, models_base).start()
    try:
        first.wait_ready()
        with first.client() as http:
            ids = [http.post("/api/prompt", json={"prompt": txt2img(seed=i)}).json()["prompt_id"]
                   for i in range(COUNT)]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # kill while one prompt runs and others wait
                queue = http.get("/api/queue").json()
                if queue["queue_running"] and len(http.get("/api/history").json()) >= 1:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the first prompt never finished")
    finally:
        first.kill()
    second = _server(base, models_base).start()
    try:
        second.wait_ready()
        with second.client() as http:
            done_before = len(http.get("/api/history").json())
            assert 1 <= done_before < COUNT
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                history = http.get("/api/history").json()
                queue = http.get("/api/queue").json()
                if len(history) == COUNT and not queue["queue_running"] and not queue["queue_pending"]:
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"only {len(history)} of {COUNT} prompts finished after the restart")
            assert sorted(history) == sorted(ids)
            assert all(entry["status"]["completed"] for entry in history.values())
            numbers = [http.get(f"/api/history/{pid}").json()[pid]["prompt"][0] for pid in ids]
            assert numbers == sorted(numbers) and len(set(numbers)) == COUNT
            later = http.post("/api/prompt", json={"prompt": txt2img(seed=99)}).json()
            assert later["number"] > max(numbers)  # the counter survives the restart
            wait_for_history(http, later["prompt_id"])
            history = http.get("/api/history").json()
    finally:
        second.stop()
    assert len(history) == COUNT + 1
    _check_outputs(base / "output", history)


def _check_outputs(folder, history: dict) -> None:
    """Each history entry names its own file, holding its own prompt's seed. Files no entry names
    are what the prompt running at the kill wrote before it died (its re-run saved under a new
    counter): at most one such prompt (one worker), and it is in history with a file of its own."""
    from PIL import Image

    def seed_in(path) -> int:
        with Image.open(path) as png:
            return json.loads(png.text["prompt"])["3"]["inputs"]["seed"]

    named = {}
    for entry in history.values():
        (image,) = entry["outputs"]["9"]["images"]
        path = folder / image["subfolder"] / image["filename"]
        assert seed_in(path) == entry["prompt"][2]["3"]["inputs"]["seed"], f"{path.name} holds another prompt"
        named[path.name] = seed_in(path)
    assert len(named) == len(history)                                  # no two entries share a file
    orphans = {p.name: seed_in(p) for p in folder.glob("*.png") if p.name not in named}
    assert len(set(orphans.values())) <= 1 and set(orphans.values()) <= set(named.values()), orphans

"""Prompts survive a hard kill: queued and running prompts run after a restart on the same user
directory, and each one completes once and only once."""

from __future__ import annotations

import sqlite3
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
    finally:
        second.stop()
    db = sqlite3.connect(base / "user" / "diffmesh" / "queue.sqlite3")
    rows = db.execute("SELECT prompt_id, COUNT(*) FROM history GROUP BY prompt_id HAVING COUNT(*) > 1").fetchall()
    assert rows == []
    assert db.execute("SELECT COUNT(*) FROM history").fetchone()[0] == COUNT + 1

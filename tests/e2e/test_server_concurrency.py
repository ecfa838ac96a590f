"""Queue parallel in `diffmesh serve --cpu --workers 2`: prompts of two users run at once, one per
idle worker, each completes once, and gives the same image as a one-worker server.

A long `Sleep` prompt holds every worker (a lone prompt gets them all) while the two users queue
their prompts, so both are pending when it is interrupted and they start together, one worker
each. Overlap is read from the events' timestamps and from `/queue`, never from durations."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from serverproc import wait_for_history
from test_server_e2e import txt2img
from websocket import create_connection

USERS = {"alice": 11, "bob": 22}


def _sleep(seconds: float) -> dict:
    return {"1": {"class_type": "Sleep", "inputs": {"seconds": seconds}}}


def _with_sleep(prompt: dict, seconds: float = 1.0) -> dict:
    """A txt2img prompt that also waits a moment, so two of them surely overlap when run at once."""
    return {**prompt, "20": {"class_type": "Sleep", "inputs": {"seconds": seconds}}}


def _connect(server, sid: str):
    ws = create_connection(f"{server.ws_url}?clientId={sid}", timeout=120,
                           header=[f"{k}: {v}" for k, v in server.headers.items()])
    assert json.loads(ws.recv())["data"]["sid"] == sid
    return ws


def _events_until_end(ws, prompt_id: str, into: list) -> None:
    while True:
        message = ws.recv()
        if isinstance(message, bytes):
            continue
        event = json.loads(message)
        into.append(event)
        data = event["data"]
        if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return


def _wait_queue(http, predicate, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = http.get("/api/queue").json()
        if predicate(queue):
            return queue
        time.sleep(0.05)
    raise AssertionError(f"queue never reached the expected state: {queue}")


def _running(queue: dict) -> list[str]:
    return sorted(item[1] for item in queue["queue_running"])


def _hold_all_workers(http) -> str:
    blocker = http.post("/api/prompt", json={"prompt": _sleep(60)}).json()["prompt_id"]
    _wait_queue(http, lambda q: _running(q) == [blocker])
    return blocker


def _window(entry: dict) -> tuple[int, int]:
    stamps = {name: data["timestamp"] for name, data in entry["status"]["messages"]}
    return stamps["execution_start"], stamps["execution_success"]


def _image(http, entry: dict) -> tuple[tuple[int, int], bytes]:
    from PIL import Image

    image = entry["outputs"]["9"]["images"][0]
    png = http.get("/api/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                        "type": "output"})
    with Image.open(io.BytesIO(png.content)) as picture:
        return picture.size, picture.convert("RGB").tobytes()


def _reference_images(start_server, base) -> dict[int, tuple]:
    """The same seeds on a one-worker server, one after the other."""
    with start_server(base) as server:
        server.wait_ready()
        with server.client() as http:
            ids = {seed: http.post("/api/prompt", json={"prompt": txt2img(seed=seed)}).json()["prompt_id"]
                   for seed in USERS.values()}
            return {seed: _image(http, wait_for_history(http, pid)) for seed, pid in ids.items()}


@pytest.fixture
def two_worker_server(tmp_path, start_server):
    with start_server(tmp_path / "two", "--cpu", "--workers", "2") as server:
        server.wait_ready()
        yield server


def test_two_users_prompts_run_at_once_complete_once_and_match_a_one_worker_server(
        two_worker_server, start_server, tmp_path):
    server = two_worker_server
    sockets = {user: _connect(server, user) for user in USERS}
    events: dict[str, list] = {user: [] for user in USERS}
    try:
        with server.client() as http:
            blocker = _hold_all_workers(http)
            ids = {user: http.post("/api/prompt", json={"prompt": _with_sleep(txt2img(seed=seed)),
                                                        "client_id": user}).json()["prompt_id"]
                   for user, seed in USERS.items()}
            queue = http.get("/api/queue").json()
            assert [i[1] for i in queue["queue_pending"]] == list(ids.values())
            readers = [threading.Thread(target=_events_until_end, args=(sockets[u], ids[u], events[u]))
                       for u in USERS]
            for reader in readers:
                reader.start()
            assert http.post("/api/interrupt", json={"prompt_id": blocker}).status_code == 200
            entries = {user: wait_for_history(http, pid) for user, pid in ids.items()}
            for reader in readers:
                reader.join(120)
            assert wait_for_history(http, blocker)["status"]["status_str"] == "error"
            images = {user: _image(http, entry) for user, entry in entries.items()}
            history = http.get("/api/history").json()
    finally:
        for ws in sockets.values():
            ws.close()
    assert all(entry["status"]["completed"] for entry in entries.values())
    assert sorted(history) == sorted([blocker, *ids.values()])            # each prompt once
    (start_a, end_a), (start_b, end_b) = (_window(entries[u]) for u in USERS)
    assert max(start_a, start_b) < min(end_a, end_b)                       # their windows overlap
    for user, pid in ids.items():             # each client sees its own prompt (and the blocker's broadcasts) only
        seen = {e["data"].get("prompt_id") for e in events[user] if e["type"] != "status"}
        assert seen - {blocker} == {pid}
        ran = [e["data"]["node"] for e in events[user] if e["type"] == "executing" and e["data"]["node"]]
        cached = next(e["data"]["nodes"] for e in events[user] if e["type"] == "execution_cached")
        assert sorted(ran + cached) == ["20", "3", "4", "5", "6", "7", "8", "9"]  # the other's outputs may be reused
        assert {"3", "8", "9", "20"} <= set(ran)
    reference = _reference_images(start_server, tmp_path / "one")
    for user, seed in USERS.items():
        assert images[user] == reference[seed]


def test_both_running_prompts_show_in_the_queue_and_interrupt_by_id_stops_only_that_one(two_worker_server):
    with two_worker_server.client() as http:
        blocker = _hold_all_workers(http)
        ids = [http.post("/api/prompt", json={"prompt": _sleep(60), "client_id": user}).json()["prompt_id"]
               for user in USERS]
        http.post("/api/interrupt", json={"prompt_id": blocker})
        _wait_queue(http, lambda q: _running(q) == sorted(ids))                # both run at once
        http.post("/api/interrupt", json={"prompt_id": ids[0]})
        assert wait_for_history(http, ids[0], timeout=20)["status"]["status_str"] == "error"
        assert _running(http.get("/api/queue").json()) == [ids[1]]            # the other one goes on
        assert ids[1] not in http.get("/api/history").json()
        http.post("/api/interrupt")                                            # no id: every running prompt
        entry = wait_for_history(http, ids[1], timeout=20)
        assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
        _wait_queue(http, lambda q: not q["queue_running"] and not q["queue_pending"])

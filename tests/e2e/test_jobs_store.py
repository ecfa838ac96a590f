"""The jobs view of the SQLite store (`QueueStore.jobs`, what `/api/jobs` serves) on a real file:
filters, both sort fields and orders, and paging that visits every job once, checked against a
plain Python sort of the same records; the columns of an older database are filled in."""

from __future__ import annotations

import json
import random
import sqlite3
import uuid

import pytest
from diffmesh.server import jobs as jobmod
from diffmesh.server.store import QueueStore, history_entry

T0 = 1_700_000_000_000


def _finished(i: int, rng: random.Random) -> tuple[str, dict, dict]:
    """A history entry of kind success / error / interrupted with distinct create and run times."""
    pid = str(uuid.UUID(int=rng.getrandbits(128)))
    kind = ("success", "error", "interrupted")[i % 3]
    created = T0 + i * 1000 + rng.randrange(500)
    start, took = created + 10, rng.randrange(1, 10_000)
    end_event = {"success": "execution_success", "error": "execution_error",
                 "interrupted": "execution_interrupted"}[kind]
    messages = [["execution_start", {"prompt_id": pid, "timestamp": start}],
                [end_event, {"prompt_id": pid, "timestamp": start + took}]]
    outputs = {"9": {"images": [{"filename": f"img_{i}.png", "subfolder": "", "type": "output"}]}} \
        if kind == "success" else {}
    extra = {"create_time": created, "extra_pnginfo": {"workflow": {"id": f"wf{i % 4}"}}}
    entry = {"prompt": [i, pid, {}, extra, ["9"]], "outputs": outputs,
             "status": {"status_str": "success" if kind == "success" else "error",
                        "completed": kind == "success", "messages": messages}, "meta": {}}
    expected = {"id": pid, "status": {"success": "completed", "error": "failed", "interrupted": "cancelled"}[kind],
                "create_time": created, "duration": took, "workflow_id": f"wf{i % 4}"}
    return pid, entry, expected


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    rng = random.Random(7)
    store = QueueStore(tmp_path_factory.mktemp("jobs") / "q.sqlite3")
    records = [_finished(i, rng) for i in range(240)]
    rng.shuffle(records)                                   # insertion order is not creation order
    store.add_history([(pid, entry) for pid, entry, _ in records])
    expected = [e for _, _, e in records]
    for j in range(5):                                     # queued after all of history
        pid = str(uuid.uuid4())
        store.enqueue(pid, {}, {"create_time": T0 + 10_000_000 + j,
                                "extra_pnginfo": {"workflow": {"id": f"wf{j % 4}"}}}, ["1"])
        expected.append({"id": pid, "status": "pending", "create_time": T0 + 10_000_000 + j, "duration": 0,
                         "workflow_id": f"wf{j % 4}"})
    running = store.dequeue()
    next(e for e in expected if e["id"] == running.prompt_id)["status"] = "in_progress"
    yield store, expected
    store.close()


CASES = [
    (jobmod.ALL_STATUSES, None, "created_at", True),
    (jobmod.HISTORY_STATUSES, None, "created_at", True),
    (("completed", "failed"), None, "created_at", False),
    (("cancelled",), None, "execution_duration", True),
    (("in_progress", "pending"), None, "created_at", True),
    (("pending", "completed"), "wf1", "created_at", True),
    (jobmod.ALL_STATUSES, None, "execution_duration", False),
]


@pytest.mark.parametrize("statuses, workflow_id, sort_by, descending", CASES)
def test_pages_visit_every_matching_job_once_in_sort_order(filled, statuses, workflow_id, sort_by, descending):
    store, records = filled
    want = [r for r in records if r["status"] in statuses and (workflow_id is None or r["workflow_id"] == workflow_id)]
    key = "create_time" if sort_by == "created_at" else "duration"
    seen = []
    for limit in (7, 64):
        seen = []
        for offset in range(0, len(want) + limit, limit):
            page, total = store.jobs(statuses, workflow_id, sort_by, descending, limit, offset)
            assert total == len(want)
            assert len(page) == max(0, min(limit, len(want) - offset))
            seen += page
        assert sorted(j["id"] for j in seen) == sorted(r["id"] for r in want)
        keys = [next(r[key] for r in want if r["id"] == j["id"]) for j in seen]
        assert keys == sorted(keys, reverse=descending)
    by_id = {r["id"]: r for r in want}
    for job in seen:
        assert job["status"] == by_id[job["id"]]["status"]
        assert job["create_time"] == by_id[job["id"]]["create_time"]


def test_history_jobs_carry_times_counts_preview_and_error(filled):
    store, records = filled
    completed, _ = store.jobs(("completed",), limit=1)
    job = completed[0]
    assert job["outputs_count"] == 1 and job["previewable_outputs_count"] == 1
    assert job["preview_output"]["filename"].startswith("img_") and job["preview_output"]["nodeId"] == "9"
    assert job["preview_output"]["mediaType"] == "images"
    assert job["execution_end_time"] > job["execution_start_time"]
    failed, _ = store.jobs(("failed",), limit=1)
    assert failed[0]["execution_error"]["prompt_id"] == failed[0]["id"]
    detail = store.job(job["id"])
    assert detail["outputs"]["9"]["images"][0]["filename"] == job["preview_output"]["filename"]
    assert detail["workflow"]["extra_data"]["create_time"] == job["create_time"]
    assert store.job(str(uuid.uuid4())) is None


def test_a_whole_listing_without_limit_and_an_offset_past_the_end(filled):
    store, records = filled
    everything, total = store.jobs()
    assert total == len(records) == len(everything)
    assert store.jobs(offset=total + 5, limit=10) == ([], total)


def test_cancelling_a_pending_prompt_moves_it_to_history_as_cancelled(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    store.enqueue("p", {"1": {}}, {"create_time": T0}, ["1"])
    assert store.cancel_pending("p") is True
    assert store.cancel_pending("p") is False
    assert store.items("pending") == [] and store.state_of("p") == "done"
    entry = store.history_entry("p")
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][0][0] == "execution_interrupted"
    page, total = store.jobs(("cancelled",))
    assert total == 1 and page[0]["id"] == "p" and page[0]["status"] == "cancelled"


def test_a_database_from_before_the_jobs_columns_gets_them_filled(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                     " prompt_id TEXT NOT NULL UNIQUE, entry TEXT NOT NULL);")
    rng = random.Random(3)
    records = [_finished(i, rng) for i in range(6)]
    db.executemany("INSERT INTO history (prompt_id, entry) VALUES (?, ?)",
                   [(pid, json.dumps(entry)) for pid, entry, _ in records])
    db.commit()
    db.close()
    store = QueueStore(path)
    page, total = store.jobs(("failed",))
    assert total == 2 and {j["id"] for j in page} == {e["id"] for _, _, e in records if e["status"] == "failed"}


def test_a_finished_prompt_appears_as_a_job_with_its_status(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    store.enqueue("a", {}, {"create_time": T0}, ["1"])
    item = store.dequeue()
    assert store.jobs()[0][0]["status"] == "in_progress"
    store.finish("a", history_entry(item, "success", True, [], {}, {}))
    job = store.jobs()[0][0]
    assert job["status"] == "completed" and job["outputs_count"] == 0 and job["priority"] == 0


def test_history_pages_and_their_json_text_follow_insertion_order(filled):
    store, _ = filled
    everything = store.history()
    ids = list(everything)
    assert len(ids) == 240
    for max_items, offset in ((10, 0), (10, 235), (7, 100), (None, 230), (10, -1), (None, -1)):
        page = store.history(max_items, offset)
        start = offset if offset >= 0 else (len(ids) - max_items if max_items else 0)
        stop = len(ids) if max_items is None else start + max_items
        assert list(page) == ids[start:stop], (max_items, offset)
        assert json.loads(store.history_json(max_items, offset)) == page


def test_job_totals_follow_the_history_cap_deletes_and_a_reopened_file(tmp_path):
    rng = random.Random(11)
    store = QueueStore(tmp_path / "q.sqlite3", history_cap=4)
    records = [_finished(i, rng) for i in range(7)]                  # statuses cycle: completed, failed, cancelled
    store.add_history([(pid, entry) for pid, entry, _ in records])
    kept = [e for _, _, e in records[-4:]]
    assert store.jobs()[1] == 4 == len(store.jobs()[0])
    assert store.jobs(("failed",))[1] == sum(e["status"] == "failed" for e in kept)
    store.delete_history([kept[-1]["id"]])
    assert store.jobs()[1] == 3
    store.close()
    again = QueueStore(tmp_path / "q.sqlite3")
    assert again.jobs(jobmod.HISTORY_STATUSES)[1] == 3 and again.jobs(("cancelled",))[1] == \
        sum(e["status"] == "cancelled" for e in kept[:-1])
    again.delete_history(None)
    assert again.jobs() == ([], 0)

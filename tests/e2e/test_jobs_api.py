"""ComfyUI's jobs API and client-chosen prompt ids on a real `diffmesh serve` (prompts of the `Sleep`
and `Fail` test nodes): the queue and history as jobs, paging, filters, cancel of pending and
running jobs, and the 400s for bad parameters."""

from __future__ import annotations

import time
import uuid

from serverproc import wait_for_history


def _sleep(seconds: float) -> dict:
    return {"1": {"class_type": "Sleep", "inputs": {"seconds": seconds}}}


def _queue(http, prompt: dict, **body) -> str:
    response = http.post("/api/prompt", json={"prompt": prompt, **body})
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def _wait_status(http, job_id: str, status: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/api/jobs/{job_id}").json()
        if job.get("status") == status:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never became {status}: {job}")


def test_client_prompt_ids_must_be_canonical_uuids_and_are_run_once(node_server):
    with node_server.client() as http:
        good = str(uuid.uuid4())
        for bad in (good.upper(), good.replace("-", ""), "not-a-uuid", 12, "{" + good + "}"):
            response = http.post("/api/prompt", json={"prompt": _sleep(0), "prompt_id": bad})
            assert response.status_code == 400, bad
            assert response.json()["error"]["type"] == "invalid_prompt_id"
        assert _queue(http, _sleep(0), prompt_id=good) == good
        wait_for_history(http, good)
        again = http.post("/api/prompt", json={"prompt": _sleep(0), "prompt_id": good})
        assert again.status_code == 400 and again.json()["error"]["type"] == "duplicate_prompt_id"
        time.sleep(0.3)
        assert http.get("/api/jobs").json()["pagination"]["total"] == 1
        assert _queue(http, _sleep(0), prompt_id=None) != good      # null: the server picks one


def test_jobs_show_running_pending_and_finished_with_cancel_of_each(node_server):
    with node_server.client() as http:
        running = _queue(http, _sleep(30))
        pending = [_queue(http, _sleep(0)) for _ in range(2)]
        _wait_status(http, running, "in_progress")
        active = http.get("/api/jobs?status=in_progress,pending&limit=200&offset=0").json()
        assert {j["id"]: j["status"] for j in active["jobs"]} == {
            running: "in_progress", pending[0]: "pending", pending[1]: "pending"}
        assert active["pagination"] == {"offset": 0, "limit": 200, "total": 3, "has_more": False}
        assert all(isinstance(j["create_time"], int) for j in active["jobs"])

        assert http.post(f"/api/jobs/{pending[0]}/cancel").json() == {"cancelled": True}
        assert http.post(f"/api/jobs/{pending[0]}/cancel").json() == {"cancelled": False}   # idempotent
        assert [item[1] for item in http.get("/api/queue").json()["queue_pending"]] == [pending[1]]
        assert http.get(f"/api/jobs/{pending[0]}").json()["status"] == "cancelled"

        assert http.post("/api/jobs/cancel", json={"job_ids": [running]}).json() == {"cancelled": True}
        job = _wait_status(http, running, "cancelled")
        assert job["execution_status"]["status_str"] == "error"
        wait_for_history(http, pending[1])

        failed = _queue(http, {"1": {"class_type": "Fail", "inputs": {}}})
        job = _wait_status(http, failed, "failed")
        assert "always fails" in job["execution_error"]["exception_message"]

        done = http.get("/api/jobs?status=completed,failed,cancelled&limit=64&offset=0").json()
        assert {j["id"]: j["status"] for j in done["jobs"]} == {
            running: "cancelled", pending[0]: "cancelled", pending[1]: "completed", failed: "failed"}
        assert http.get("/api/jobs?status=cancelled").json()["pagination"]["total"] == 2
        assert http.post(f"/api/jobs/{failed}/cancel").json() == {"cancelled": False}
        assert http.post(f"/api/jobs/{uuid.uuid4()}/cancel").json() == {"cancelled": False}


def test_paging_sorting_and_details(node_server):
    with node_server.client() as http:
        ids = [_queue(http, _sleep(0)) for _ in range(5)]
        for job_id in ids:
            wait_for_history(http, job_id)
        newest_first = http.get("/api/jobs?limit=2&offset=0").json()
        assert [j["id"] for j in newest_first["jobs"]] == ids[::-1][:2]
        assert newest_first["pagination"] == {"offset": 0, "limit": 2, "total": 5, "has_more": True}
        last = http.get("/api/jobs?limit=2&offset=4").json()
        assert [j["id"] for j in last["jobs"]] == [ids[0]] and last["pagination"]["has_more"] is False
        oldest_first = http.get("/api/jobs?sort_order=asc").json()
        assert [j["id"] for j in oldest_first["jobs"]] == ids
        assert oldest_first["pagination"]["limit"] is None
        by_duration = http.get("/api/jobs?sort_by=execution_duration&limit=5").json()
        assert sorted(j["id"] for j in by_duration["jobs"]) == sorted(ids)
        detail = http.get(f"/api/jobs/{ids[0]}").json()
        assert detail["status"] == "completed" and detail["outputs"]["1"]["text"] == ["1 done"]
        assert detail["preview_output"]["content"] == "1 done" and detail["outputs_count"] == 0
        assert detail["workflow"]["prompt"]["1"]["class_type"] == "Sleep"
        assert http.get(f"/api/jobs/{uuid.uuid4()}").status_code == 404


def test_bad_job_queries_are_400_with_comfyui_messages(node_server):
    with node_server.client() as http:
        for query, text in (("status=done", "Invalid status value(s): done"), ("sort_by=name", "sort_by"),
                            ("sort_order=up", "sort_order"), ("limit=0", "limit must be a positive integer"),
                            ("limit=x", "limit must be an integer"), ("offset=x", "offset must be an integer"),
                            (f"offset={2**82}", "offset is out of range"), (f"limit={2**63}", "limit is out of range")):
            response = http.get(f"/api/jobs?{query}")
            assert response.status_code == 400 and text in response.json()["error"], query
        assert http.get("/api/jobs?offset=-5").json()["pagination"]["offset"] == 0
        bad = http.post("/api/jobs/cancel", json={"job_ids": ["x", str(uuid.uuid4())]})
        assert bad.status_code == 400 and bad.json()["invalid_ids"] == ["x"]
        assert http.post("/api/jobs/cancel", json={"job_ids": "x"}).status_code == 400
        assert http.post("/api/jobs/cancel", content=b"{oops").status_code == 400

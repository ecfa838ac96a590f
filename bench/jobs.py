"""Benchmark of the jobs API and /history with a large history (a benchmark, not a CI test).

Fills a server's SQLite store with N finished entries (default 100,000: 80% completed, 10%
failed, 10% cancelled, each with one image output), starts `diffmesh serve` on it and times, over
loopback with one client, the frontend's requests: the first and the last page of
`/api/jobs?status=completed,failed,cancelled&limit=64` (its history panel), the queue query
`status=in_progress,pending`, a page by execution duration, and `/history?max_items=64` (first and
last page) and the whole `/history`; and the same pages from the store in-process (no HTTP).
Prints JSON: p50/p99 in milliseconds per request.

    python bench/jobs.py [--entries 100000] [--repeat 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from serverproc import ServerProcess  # noqa: E402

T0 = 1_760_000_000_000


def entry(i: int) -> tuple[str, dict]:
    pid = str(uuid.UUID(int=i + 1))
    kind = "failed" if i % 10 == 3 else "cancelled" if i % 10 == 7 else "completed"
    created = T0 + i * 1000
    end = {"completed": "execution_success", "failed": "execution_error",
           "cancelled": "execution_interrupted"}[kind]
    messages = [["execution_start", {"prompt_id": pid, "timestamp": created + 5}],
                [end, {"prompt_id": pid, "timestamp": created + 5 + (i * 37) % 5000}]]
    outputs = {"9": {"images": [{"filename": f"ComfyUI_{i:06d}_.png", "subfolder": "", "type": "output"}]}} \
        if kind == "completed" else {}
    prompt = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}
    return pid, {"prompt": [i, pid, prompt, {"create_time": created, "client_id": "bench"}, ["9"]],
                 "outputs": outputs, "status": {"status_str": "success" if kind == "completed" else "error",
                                                "completed": kind == "completed", "messages": messages},
                 "meta": {}}


def fill(db: Path, n: int) -> float:
    from diffmesh.server.store import QueueStore

    started = time.perf_counter()
    store = QueueStore(db, history_cap=None)
    for start in range(0, n, 10_000):
        store.add_history([entry(i) for i in range(start, min(n, start + 10_000))])
    store.close()
    return time.perf_counter() - started


def _summary(samples: list[float]) -> dict:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(round(0.99 * (len(samples) - 1))))]
    return {"p50_ms": round(statistics.median(samples), 2), "p99_ms": round(p99, 2), "n": len(samples)}


def timed(http, path: str, repeat: int) -> dict:
    http.get(path).raise_for_status()                       # warm
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        response = http.get(path)
        samples.append((time.perf_counter() - t) * 1000)
        response.raise_for_status()
    return {**_summary(samples), "bytes": len(response.content)}


def store_timings(db: Path, n: int, repeat: int) -> dict:
    """The same pages from the store in this process: the SQL and JSON cost without HTTP."""
    from diffmesh.server.store import QueueStore

    store = QueueStore(db, history_cap=None)
    history = ("completed", "failed", "cancelled")
    calls = {"jobs_first_page": lambda: store.jobs(history, limit=64, offset=0),
             "jobs_last_page": lambda: store.jobs(history, limit=64, offset=max(0, n - 64)),
             "history_first_page": lambda: store.history_json(64, 0),
             "history_last_page": lambda: store.history_json(64, max(0, n - 64))}
    out = {}
    for name, call in calls.items():
        call()
        samples = []
        for _ in range(repeat):
            t = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t) * 1000)
        out[name] = _summary(samples)
    store.close()
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--full-repeat", type=int, default=3, help="samples of the whole /history")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    n, last = args.entries, max(0, args.entries - 64)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        db = base / "user" / "diffmesh" / "queue.sqlite3"
        fill_s = fill(db, n)
        in_process = store_timings(db, n, args.repeat)
        with ServerProcess(base, "--cpu") as server:
            server.wait_ready(120)
            with server.client(timeout=600) as http:
                total = http.get("/api/jobs?limit=1").json()["pagination"]["total"]
                assert total == n, f"the server lists {total} jobs, expected {n}"
                history = "/api/jobs?status=completed,failed,cancelled&limit=64"
                routes = {
                    "jobs_first_page": f"{history}&offset=0",
                    "jobs_last_page": f"{history}&offset={last}",
                    "jobs_queue_panel": "/api/jobs?status=in_progress,pending&limit=200&offset=0",
                    "jobs_completed_only_last_page": f"/api/jobs?status=completed&limit=64&offset={n * 8 // 10 - 64}",
                    "jobs_by_duration_middle_page": f"/api/jobs?sort_by=execution_duration&limit=64&offset={n // 2}",
                    "history_first_page": "/api/history?max_items=64",
                    "history_last_page": f"/api/history?max_items=64&offset={last}",
                }
                results = {name: timed(http, path, args.repeat) for name, path in routes.items()}
                results["history_all_entries"] = timed(http, "/api/history", args.full_repeat)
    report = {"benchmark": "jobs", "entries": n, "fill_seconds": round(fill_s, 1), "requests": results,
              "store_in_process": in_process,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(),
                          "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
                          "load_avg_1m": round(psutil.getloadavg()[0], 2)},
              "date": time.strftime("%Y-%m-%d")}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

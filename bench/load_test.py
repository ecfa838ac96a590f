"""Load test of `diffmesh serve` (a benchmark, not a CI test).

N concurrent clients, each with its own websocket, queue tiny SD1 txt2img prompts on loopback.
Checks that every prompt completes exactly once, and prints JSON: prompts/s, the server's peak
RSS (process and children), and the time from launch until /system_stats answered.

    OMP_NUM_THREADS=1 python bench/load_test.py [--clients 8] [--prompts 200] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from serverproc import ServerProcess  # noqa: E402


def tiny_models_dir() -> Path:
    """The tiny test models (made once into .cache/test-models, as the test fixtures do)."""
    base = REPO / ".cache" / "test-models"
    if not (base / "complete.json").exists():
        from diffmesh.models.testmodels import TEST_MODELS_VERSION, write_test_models

        info = write_test_models(base)
        info["version"] = TEST_MODELS_VERSION
        (base / "complete.json").write_text(json.dumps(info, indent=1))
    return base / "models"


def prompt(seed: int, steps: int) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "load", "images": ["8", 0]}},
    }


class RssWatch(threading.Thread):
    """Samples the RSS of a process tree until stopped; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)


def client(server: ServerProcess, index: int, count: int, steps: int, results: dict) -> None:
    from websocket import create_connection

    sid = f"load-{index}"
    ws = create_connection(f"{server.ws_url}?clientId={sid}", timeout=600)
    ws.recv()
    mine, finished = [], []
    with server.client(timeout=120) as http:
        for i in range(count):
            answer = http.post("/api/prompt", json={"prompt": prompt(index * 1000 + i, steps), "client_id": sid})
            answer.raise_for_status()
            mine.append(answer.json()["prompt_id"])
    while len(finished) < len(mine):
        message = ws.recv()
        if isinstance(message, bytes):
            continue
        event = json.loads(message)
        if event["type"] == "executing" and event["data"].get("node") is None:
            finished.append(event["data"]["prompt_id"])
    ws.close()
    results[sid] = {"queued": mine, "finished": finished}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("serve_args", nargs="*", help="extra `diffmesh serve` flags (e.g. --workers 2)")
    args = parser.parse_args()
    models = tiny_models_dir()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "base", "--models-dir", str(models), *args.serve_args).start()
        try:
            startup = server.wait_ready()
            watch = RssWatch(server.proc.pid)
            watch.start()
            with server.client(timeout=300) as http:
                http.get("/api/object_info").raise_for_status()  # runtime built
            per_client = [args.prompts // args.clients + (i < args.prompts % args.clients) for i in range(args.clients)]
            results: dict = {}
            threads = [threading.Thread(target=client, args=(server, i, n, args.steps, results))
                       for i, n in enumerate(per_client)]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - start
            watch.stop.set()
            with server.client(timeout=120) as http:
                history = http.get("/api/history").json()
        finally:
            server.stop()
    queued = [pid for r in results.values() for pid in r["queued"]]
    finished = [pid for r in results.values() for pid in r["finished"]]
    report = {
        "clients": args.clients, "prompts": len(queued), "steps": args.steps, "image": "64x64 tiny SD1",
        "wall_s": round(wall, 2), "prompts_per_s": round(len(queued) / wall, 2),
        "server_peak_rss_mb": round(watch.peak / 2**20, 1),
        "startup_to_system_stats_s": round(startup, 2),
        "completed": sum(1 for pid in queued if history.get(pid, {}).get("status", {}).get("completed")),
        "lost": len(set(queued) - set(history)),
        "duplicated_end_events": len(finished) - len(set(finished)),
        "history_entries": len(history),
    }
    print(json.dumps(report, indent=1))
    ok = report["lost"] == 0 and report["completed"] == len(queued) and report["duplicated_end_events"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

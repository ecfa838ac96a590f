"""Ray executor overhead: 2 one-thread Ray actors vs 2 one-thread multi-process workers, full-size random
SD1.5 (`.cache/sd15-random.safetensors`, made by the tests or ../shared/reference/make_sd15_random.py), 256x256,
euler, cfg 7, fp32. Two measurements per backend, backends alternating in one run:
  - CFG parallel: seconds per sampling step (cond and uncond on the two workers, exchanged every step);
  - queue: wall time of 4 sampling jobs (4 steps each) from 2 threads, one worker per job.
The Ray backend is a local Ray instance on loopback (a cluster on one machine); what crosses the network
on a real cluster (model bytes once per node, arguments, results, events) is the same.

    OMP_NUM_THREADS=1 python bench/ray_executor.py [--repeats 2] [--out bench/results/ray_executor.json]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / ".cache" / "sd15-random.safetensors"


def _executor(kind: str):
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.executors.ray_actors import RayExecutor

    specs = [WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(2)]
    return MultiProcessExecutor(specs) if kind == "multiproc" else RayExecutor(specs)


def _job(engine, handles, seed: int, steps: int, size: int):
    import torch

    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    positive = engine.encode_text(handles["clip"], "a photo of a cat")
    negative = engine.encode_text(handles["clip"], "blurry")
    latent = torch.zeros(1, 4, size // 8, size // 8)
    return SampleJob(latent=latent, noise=prepare_noise(latent, seed, None),
                     sigmas=ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", steps, 1.0),
                     sampler_name="euler", cfg=7.0, positive=positive, negative=negative, seed=seed)


def measure(kind: str, steps: int, size: int, model: Path = MODEL) -> dict:
    from diffmesh.engine.engine import Engine
    from diffmesh.models.handle import ModelHandle

    handles = {c: ModelHandle(str(model), c, "sd1") for c in ("unet", "clip", "vae")}
    executor = _executor(kind)
    started = time.perf_counter()
    executor.start()
    start_s = time.perf_counter() - started
    try:
        cfg = Engine(executor, parallel="cfg")
        job = _job(cfg, handles, 1, steps, size)
        cfg.sample(handles["unet"], job)                       # load the UNet on both workers
        marks: list[float] = []
        cfg.sample(handles["unet"], job, progress=lambda e: marks.append(time.perf_counter()) if e.get("worker") == 0 else None)
        per_step = [b - a for a, b in zip(marks, marks[1:])]
        queue = Engine(executor, parallel="queue")
        jobs = [_job(queue, handles, seed, steps, size) for seed in range(4)]
        leases = [queue.acquire(pending=2), queue.acquire(pending=2)]

        def run(lease, mine):
            with lease:
                for j in mine:
                    lease.engine.sample(handles["unet"], j)
        t0 = time.perf_counter()
        threads = [threading.Thread(target=run, args=(lease, jobs[i::2])) for i, lease in enumerate(leases)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        queue_s = time.perf_counter() - t0
    finally:
        executor.shutdown()
    return {"backend": kind, "start_s": round(start_s, 2), "cfg_step_s": [round(t, 3) for t in per_step],
            "cfg_step_mean_s": round(sum(per_step) / max(len(per_step), 1), 3), "queue_4_jobs_s": round(queue_s, 2),
            "queue_jobs_per_min": round(4 * 60 / queue_s, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--model", type=Path, default=MODEL, help="an SD1 checkpoint (default: the full-size random one)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ray_executor.json"))
    a = ap.parse_args()
    if not a.model.exists():
        raise SystemExit(f"{a.model} is missing: run the parity tests once, or ../shared/reference/make_sd15_random.py")
    runs = [measure(kind, a.steps, a.size, a.model) for _ in range(a.repeats) for kind in ("multiproc", "ray")]
    by = {k: [r for r in runs if r["backend"] == k] for k in ("multiproc", "ray")}

    def mean(kind, key):
        return sum(r[key] for r in by[kind]) / len(by[kind])
    result = {"benchmark": "ray_executor", "model": a.model.name, "size": a.size, "steps": a.steps,
              "machine": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}, "runs": runs,
              "cfg_step_overhead_ratio_ray_vs_multiproc": round(mean("ray", "cfg_step_mean_s") / mean("multiproc", "cfg_step_mean_s"), 3),
              "queue_time_ratio_ray_vs_multiproc": round(mean("ray", "queue_4_jobs_s") / mean("multiproc", "queue_4_jobs_s"), 3)}
    from diffmesh.benchmarks.report import write_report

    write_report(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

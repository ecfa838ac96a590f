"""Sequence-parallel benchmark: one image of the full-width reference Flux.1-dev transformer
(make_dit_random.py: width 3072, 24 heads, 1 double + 1 single block, fp32) on 1 one-thread CPU
worker and on 2 one-thread CPU workers (image tokens split, Ulysses attention), in the same run
and the same worker processes (the 1-worker case runs on worker 0 with --parallel none).

Measured per size: time per sampling step (euler, cfg 1, FluxGuidance 3.5, ModelSamplingFlux for
the size, a 256-row T5-like context), the sampling time, and the whole-image latency = sampling +
VAE decode of the reference Flux VAE (flux-ae-random; the decode runs on one worker in both cases,
so it is the same work beside a shorter sampling). The runs alternate (1, 2, 1, 2, ... workers)
so that a change in machine load hits both alike; the load average is recorded before and after.
Beside wall times, each step's CPU seconds of every worker process (utime + stime from /proc) are
recorded: on a shared machine they change far less than wall time, and the step's CPU time of the
busiest worker bounds from below what the step would take on a quiet machine (time spent waiting
for an exchange is not CPU time, so the CPU-time ratio leaves out the exchanges' latency).

    python bench/sequence.py                                # 1024, 2 steps, 1 repeat
    python bench/sequence.py --sizes 512 1024 --steps 2 --repeats 2 --out bench/results/sequence.json
    python bench/sequence.py --no-decode                    # sampling only

Output: JSON on stdout and in bench/results/sequence.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / ".cache" / "dit" / "flux1-dev-random.safetensors"
VAE = REPO / ".cache" / "dit" / "flux-ae-random.safetensors"


def _job(model, size: int, steps: int):
    import torch

    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    g = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 256, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                      "guidance": 3.5}]]
    latent = torch.zeros(1, 16, size // 8, size // 8)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 42, None),
                     sigmas=ksampler_sigmas(model_sampling_for(model), "simple", "euler", steps, 1.0),
                     sampler_name="euler", cfg=1.0, positive=cond, negative=cond, seed=42)


def _one_image(engine, model, vae, job, decode: bool) -> dict:
    from diffmesh.benchmarks.clock import WorkerClock

    clock = WorkerClock(engine)
    start = clock.start
    latent = engine.sample(model, job, clock.progress)
    sampled = time.perf_counter()
    if decode:
        engine.vae_decode(vae, latent)
    end = time.perf_counter()
    steps, cpu_steps = clock.step_seconds(), clock.busiest_cpu_per_step()
    return {"strategy": engine.last_plan.strategy, "workers": list(engine.last_plan.workers),
            "step_s": [round(s, 2) for s in steps], "first_step_s": round(steps[0], 2),
            "later_step_s": round(sum(steps[1:]) / max(1, len(steps) - 1), 2) if len(steps) > 1 else None,
            "cpu_step_s": [round(s, 2) for s in cpu_steps],
            "sampling_s": round(sampled - start, 2), "decode_s": round(end - sampled, 2) if decode else None,
            "image_s": round(end - start, 2), "latent": latent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--attention", default="auto", choices=("auto", "ulysses", "ring"))
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sequence.json"))
    a = ap.parse_args()

    from diffmesh.engine.engine import Engine
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.models.handle import ModelHandle
    from diffmesh.nodes.dit import flux_mu

    if not MODEL.exists() or (not a.no_decode and not VAE.exists()):
        raise SystemExit(f"missing {MODEL} / {VAE}: make them with /work/shared/reference/make_dit_random.py")
    load_before = [round(x, 2) for x in os.getloadavg()]
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(2)],
                                    start_timeout=300)
    executor.start()
    sizes = []
    try:
        one = Engine(executor, parallel="none")
        two = Engine(executor, parallel="sequence", sequence_attention=a.attention)
        vae = ModelHandle(str(VAE), "vae", "flux")
        for size in a.sizes:
            model = ModelHandle(str(MODEL), "unet", "flux", sampling=("flux", flux_mu(1.15, 0.5, size, size), 1.0))
            job = _job(model, size, a.steps)
            warm = Engine(executor, parallel="sequence")      # load the model (and VAE) on both workers first
            warm.sample(model, _job(model, 256, 1))
            if not a.no_decode:
                for w in (0, 1):
                    executor.call(w, "vae_decode", vae, job.latent[:, :, :8, :8]).result()
            runs = {"1 worker": [], "2 workers": []}
            for _ in range(a.repeats):
                for name, engine in (("1 worker", one), ("2 workers", two)):
                    runs[name].append(_one_image(engine, model, vae, job, not a.no_decode))
            same = (runs["2 workers"][0]["latent"] - runs["1 worker"][0]["latent"]).norm() / \
                runs["1 worker"][0]["latent"].norm()
            for group in runs.values():
                for r in group:
                    r.pop("latent")

            def best(name: str, key: str) -> float:
                values = [r[key] for r in runs[name] if r[key] is not None]
                return min(values) if values else float("nan")
            step_key = "later_step_s" if a.steps > 1 else "first_step_s"
            sizes.append({
                "size": size, "tokens": (size // 16) ** 2, "steps": a.steps, "runs": runs,
                "latent_relative_difference": float(f"{same.item():.2e}"),
                "speedup_step": round(best("1 worker", step_key) / best("2 workers", step_key), 3),
                "speedup_sampling": round(best("1 worker", "sampling_s") / best("2 workers", "sampling_s"), 3),
                "speedup_image": round(best("1 worker", "image_s") / best("2 workers", "image_s"), 3),
                "speedup_step_cpu": round(min(min(r["cpu_step_s"][1:] or r["cpu_step_s"]) for r in runs["1 worker"])
                                          / min(min(r["cpu_step_s"][1:] or r["cpu_step_s"])
                                                for r in runs["2 workers"]), 3),
                "step_key": step_key})
    finally:
        executor.shutdown(timeout=10)
    result = {"benchmark": "sequence", "model": "flux1-dev-random (3072 wide, 24 heads, 1 double + 1 single block, "
                                                "fp32)", "attention": a.attention,
              "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "sizes": sizes}
    from diffmesh.benchmarks.report import write_report

    write_report(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

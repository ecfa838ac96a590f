"""Exact patch-parallel benchmark: the full-size random SD1.5 (tests/conftest.py's sd15-random, made by
/work/shared/reference/make_sd15_random.py; fp32 on CPU) on 1 one-thread CPU worker and on 2 one-thread
CPU workers (latent rows in bands: halo rows, global GroupNorm, all keys/values exchanged through gloo),
in the same run and the same worker processes (the 1-worker case runs on worker 0 with --parallel none).

Measured per size: time per sampling step of the UNet (euler, cfg 1 by default: one UNet evaluation per
step, the case CFG parallel cannot speed up; --cfg 7 doubles the rows), the SD VAE decode of the image
(split in bands on 2 workers), and the whole-image latency = sampling + decode. The runs alternate (1, 2,
1, 2, ...) so a change in machine load hits both alike; the load average is recorded before and after.
Beside wall times, every worker's CPU seconds (utime + stime from /proc) are recorded per step and per
decode: on a shared machine they change far less than wall time; the busiest worker's CPU time bounds
from below what the part would take on a quiet machine (waiting in an exchange is not CPU time).

    python bench/patch.py                                   # 1024, 2 steps, 1 repeat
    python bench/patch.py --sizes 512 --steps 1             # a short check
    python bench/patch.py --sizes 1024 --steps 2 --repeats 2 --out bench/results/patch.json
    python bench/patch.py --skip-sd --wan-vae 240 416 2   # the Wan 2.1 VAE: a 5-frame 240x416 clip

Memory: each worker holds the fp32 UNet and VAE (about 3.7 GB), so about 8 GB in all.
Output: JSON on stdout and in bench/results/patch.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / ".cache" / "sd15-random.safetensors"


def _job(size: int, steps: int, cfg: float):
    import torch

    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    g = torch.Generator().manual_seed(0)
    positive, negative = ([[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(2))
    latent = torch.zeros(1, 4, size // 8, size // 8)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 42, None),
                     sigmas=ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", steps, 1.0),
                     sampler_name="euler", cfg=cfg, positive=positive, negative=negative, seed=42)


def _one_image(engine, unet, vae, job) -> dict:
    from diffmesh.benchmarks.clock import WorkerClock

    clock = WorkerClock(engine)
    start = clock.start
    latent = engine.sample(unet, job, clock.progress)
    sampled = time.perf_counter()
    before_decode = clock.cpu_now()
    image = engine.vae_decode(vae, latent)
    end = time.perf_counter()
    after_decode = clock.cpu_now()
    steps, cpu_steps = clock.step_seconds(), clock.busiest_cpu_per_step()
    return {"strategy": engine.last_plan.strategy, "workers": list(engine.last_plan.workers),
            "step_s": [round(s, 2) for s in steps], "cpu_step_s": [round(s, 2) for s in cpu_steps],
            "sampling_s": round(sampled - start, 2), "decode_s": round(end - sampled, 2),
            "cpu_decode_s": round(max(b - a for a, b in zip(before_decode, after_decode)), 2),
            "image_s": round(end - start, 2), "latent": latent, "image": image}


def _relative(a, b) -> float:
    return float(f"{((a - b).norm() / b.norm()).item():.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--wan-vae", type=int, nargs=3, default=None, metavar=("H", "W", "LATENT_FRAMES"),
                    help="also the full-size random Wan 2.1 VAE's decode of one clip (H x W pixels), 1 vs 2 workers")
    ap.add_argument("--skip-sd", action="store_true", help="only the --wan-vae measurement")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "patch.json"))
    a = ap.parse_args()

    from diffmesh.engine.engine import Engine
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.models.handle import ModelHandle

    if not CHECKPOINT.exists():
        raise SystemExit(f"missing {CHECKPOINT}: run the slow parity tests once, or "
                         "/work/shared/reference/make_sd15_random.py --variant full --out that path")
    load_before = [round(x, 2) for x in os.getloadavg()]
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(2)],
                                    start_timeout=300)
    executor.start()
    sizes = []
    try:
        one, two = Engine(executor, parallel="none"), Engine(executor, parallel="patch")
        unet, vae = (ModelHandle(str(CHECKPOINT), c, "sd1") for c in ("unet", "vae"))
        started = time.perf_counter()
        if not a.skip_sd:
            two.sample(unet, _job(256, 1, 1.0))             # load the UNet on both workers first
            two.vae_decode(vae, torch_zeros((1, 4, 32, 32)))  # and the VAE
        print(f"warm-up (loading on both workers) {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        for size in ([] if a.skip_sd else a.sizes):
            job = _job(size, a.steps, a.cfg)
            runs = {"1 worker": [], "2 workers": []}
            for _ in range(a.repeats):
                for name, engine in (("1 worker", one), ("2 workers", two)):
                    runs[name].append(_one_image(engine, unet, vae, job))
                    shown = {k: v for k, v in runs[name][-1].items() if k not in ("latent", "image")}
                    print(f"[{size}] {name}: {json.dumps(shown)}", file=sys.stderr, flush=True)
            first, second = runs["1 worker"][0], runs["2 workers"][0]
            differences = {"latent": _relative(second["latent"], first["latent"]),
                           "image": _relative(second["image"], first["image"])}
            for group in runs.values():
                for r in group:
                    r.pop("latent"), r.pop("image")

            def best(name: str, key: str) -> float:
                return min(min(r[key]) if isinstance(r[key], list) else r[key] for r in runs[name])
            sizes.append({
                "size": size, "latent_rows": size // 8, "steps": a.steps, "cfg": a.cfg, "runs": runs,
                "relative_difference_2_vs_1": differences,
                "speedup_step": round(best("1 worker", "step_s") / best("2 workers", "step_s"), 3),
                "speedup_step_cpu": round(best("1 worker", "cpu_step_s") / best("2 workers", "cpu_step_s"), 3),
                "speedup_decode": round(best("1 worker", "decode_s") / best("2 workers", "decode_s"), 3),
                "speedup_decode_cpu": round(best("1 worker", "cpu_decode_s") / best("2 workers", "cpu_decode_s"), 3),
                "speedup_image": round(best("1 worker", "image_s") / best("2 workers", "image_s"), 3)})
        wan = _wan_vae(one, two, a.wan_vae, a.repeats) if a.wan_vae else None
    finally:
        executor.shutdown(timeout=10)
    result = {"benchmark": "patch", "wan_vae": wan, "model": "sd15-random (full-size SD1.5 UNet and VAE, fp32 on CPU)",
              "workers": "one torch thread each",
              "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "sizes": sizes}
    from diffmesh.benchmarks.report import write_report

    write_report(a.out, result)
    return 0


def _wan_vae(one, two, shape: list[int], repeats: int) -> dict:
    """The Wan 2.1 VAE's decode of one (1, 16, T, H/8, W/8) clip on 1 worker and in bands on 2 (alternating)."""
    import torch

    from diffmesh.benchmarks.clock import WorkerClock
    from diffmesh.models.handle import ModelHandle

    path = REPO / ".cache" / "dit" / "wan21-vae-random.safetensors"
    if not path.exists():
        raise SystemExit(f"missing {path}: /work/shared/reference/make_dit_random.py writes it (wan21vae)")
    h, w, frames = shape
    vae = ModelHandle(str(path), "vae", "wan21")
    latent = torch.randn(1, 16, frames, h // 8, w // 8, generator=torch.Generator().manual_seed(0))
    two.vae_decode(vae, latent[:, :, :1, :16, :16])                      # load on both workers
    runs: dict[str, list] = {"1 worker": [], "2 workers": []}
    images = {}
    for _ in range(repeats):
        for name, engine in (("1 worker", one), ("2 workers", two)):
            clock = WorkerClock(engine)
            images[name] = engine.vae_decode(vae, latent)
            runs[name].append({"decode_s": round(time.perf_counter() - clock.start, 2),
                               "cpu_decode_s": round(max(b - a for a, b in zip(clock.cpu[0], clock.cpu_now())), 2)})
            print(f"[wan vae {h}x{w}x{frames}] {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    best = {k: min(r["decode_s"] for r in v) for k, v in runs.items()}
    return {"size": [h, w], "latent_frames": frames, "frames": images["1 worker"].shape[0], "runs": runs,
            "relative_difference_2_vs_1": _relative(images["2 workers"], images["1 worker"]),
            "speedup_decode": round(best["1 worker"] / best["2 workers"], 3)}


def torch_zeros(shape: tuple[int, ...]):
    import torch

    return torch.zeros(shape)


if __name__ == "__main__":
    raise SystemExit(main())

"""Batch x patch benchmark: a batch of images on N one-thread CPU worker processes (default 4, batch 2),
run as plain batch split (one image per worker, the others idle), patch parallel of every image over all
N workers, batch x patch (the planner's groups: batch 2 on 4 workers = two pairs, each patch-splitting
its image) and one worker (`--parallel none`), in the same run and the same worker processes.

Measured per strategy: time per sampling step (wall), and the busiest worker's CPU seconds per step
(utime + stime from /proc; waiting in an exchange is not CPU time). With fewer cores than workers the
wall times say little (workers share cores); the busiest worker's CPU time per step is what one device
would spend per step with a device per worker and a fast link, so the CPU ratios are the figures to
read on a small machine. The planner's predicted cost (`SamplePlan.cost`, rows per unit speed) is
recorded beside each, and each strategy's final latent is compared with the one-worker latent.
Rounds alternate the strategies so a change in machine load hits all alike.

    python bench/batch_patch.py                                        # 4 workers, batch 2, 512, 2 steps
    python bench/batch_patch.py --workers 4 --batch 2 --size 1024 --steps 3 --repeats 2
    python bench/batch_patch.py --checkpoint PATH --size 256 --steps 1   # a short check, another SD1 file

Memory: every worker holds the fp32 UNet (full-size SD1.5: about 3.4 GB), so about 14 GB on 4 workers.
Output: JSON on stdout and in bench/results/batch_patch.json (or --out).
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


def _job(batch: int, size: int, steps: int, cfg: float, context: int):
    import torch

    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    g = torch.Generator().manual_seed(0)
    positive, negative = ([[torch.randn(1, 77, context, generator=g), {}]] for _ in range(2))
    latent = torch.zeros(batch, 4, size // 8, size // 8)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 42, None),
                     sigmas=ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", steps, 1.0),
                     sampler_name="euler", cfg=cfg, positive=positive, negative=negative, seed=42)


def _run(engine, unet, job, plan=None) -> dict:
    """One sampling run; `plan` (a SamplePlan) is run as given instead of the engine's own choice."""
    from diffmesh.benchmarks.clock import WorkerClock

    clock = WorkerClock(engine)
    progress, start = clock.progress, clock.start
    if plan is None:
        latent = engine.sample(unet, job, progress)
        plan = engine.last_plan
    else:                        # plain patch of a batch: the planner would pick batch x patch instead
        from diffmesh.parallel.request import plain_handle

        latent = engine._sample_sequence(plain_handle(unet), job, plan, progress)
    steps = clock.step_seconds()
    return {"strategy": plan.strategy, "workers": list(plan.workers), "ranges": [list(r) for r in plan.ranges],
            "planned_cost": round(plan.cost, 3), "step_s": [round(s, 2) for s in steps],
            "cpu_step_s": [round(s, 2) for s in clock.busiest_cpu_per_step()],
            "sampling_s": round(time.perf_counter() - start, 2), "latent": latent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--checkpoint", default=str(CHECKPOINT), help="an SD1 checkpoint (default: sd15-random)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "batch_patch.json"))
    a = ap.parse_args()

    from diffmesh.engine.engine import Engine
    from diffmesh.engine.planner import Workload, _patch
    from diffmesh.engine.placement import WorkerInfo
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.models import detect
    from diffmesh.models.handle import ModelHandle

    if not Path(a.checkpoint).exists():
        raise SystemExit(f"missing {a.checkpoint}: run the slow parity tests once, or "
                         "/work/shared/reference/make_sd15_random.py --variant full --out that path")
    context = next(s[-1] for k, s in detect.read_shapes(a.checkpoint).items() if k.endswith("attn2.to_k.weight"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(a.workers)],
                                    start_timeout=300)
    executor.start()
    try:
        unet = ModelHandle(a.checkpoint, "unet", "sd1")
        job = _job(a.batch, a.size, a.steps, a.cfg, context)
        infos = [WorkerInfo(w, "cpu", f"cpu:{w}") for w in range(a.workers)]
        every = _patch(Workload(a.batch, a.cfg, patch_rows=a.size // 8, patch_align=8), infos, infos[0], asked=True)
        runs = {"single": (Engine(executor, parallel="none"), None),
                "batch": (Engine(executor, parallel="batch"), None),
                "patch": (Engine(executor, parallel="patch"), every),
                "batch_patch": (Engine(executor, parallel="patch"), None)}
        started = time.perf_counter()
        runs["patch"][0]._sample_sequence(unet, _job(1, 64 * a.workers, 1, 1.0, context), every, None)
        print(f"warm-up (loading on every worker) {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        results: dict[str, list[dict]] = {name: [] for name in runs}
        for _ in range(a.repeats):
            for name, (engine, plan) in runs.items():
                results[name].append(_run(engine, unet, job, plan))
                shown = {k: v for k, v in results[name][-1].items() if k != "latent"}
                print(f"{name}: {json.dumps(shown)}", file=sys.stderr, flush=True)
        reference = results["single"][0]["latent"]
        summary = {}
        for name, group in results.items():
            latent = group[0]["latent"]
            for r in group:
                r.pop("latent")
            later = [s for r in group for s in (r["step_s"][1:] or r["step_s"])]      # step 1 may load
            later_cpu = [s for r in group for s in (r["cpu_step_s"][1:] or r["cpu_step_s"])]
            summary[name] = {"step_s": min(later), "cpu_step_s": min(later_cpu),
                             "relative_difference_vs_single": float(
                                 f"{((latent - reference).norm() / reference.norm()).item():.2e}")}
        for name in ("batch", "patch", "batch_patch"):
            summary[name]["speedup_step_vs_single"] = round(summary["single"]["step_s"] / summary[name]["step_s"], 3)
            summary[name]["speedup_cpu_vs_single"] = round(
                summary["single"]["cpu_step_s"] / summary[name]["cpu_step_s"], 3)
    finally:
        executor.shutdown(timeout=10)
    result = {"benchmark": "batch_patch", "checkpoint": a.checkpoint, "workers": a.workers,
              "threads_per_worker": 1, "batch": a.batch, "size": a.size, "steps": a.steps, "cfg": a.cfg,
              "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "summary": summary, "runs": results}
    from diffmesh.benchmarks.report import write_report

    write_report(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

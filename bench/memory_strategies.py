"""Models larger than one device, measured on CPU workers: step time of resident (one worker, no
budget) vs sharded over 2 vs layer split over 2 vs streamed from CPU (one worker), each under the
same `--vram-budget` (a fraction of the model's weights), with the cost model's prediction beside
each measurement; the predictions use the link measured among the two workers of the sharded and
layer-split runs (`benchmarks.link`, before and after each timed step; recorded as "link" per
model); plus (`--gpu-table`) the cost model's predictions for 2, 4 and 8 GPUs over NVLink
and PCIe next to the published xDiT / DistriFusion / raylight figures. JSON out.

Run it alone (it starts up to two worker processes, one torch thread each):
    python3 bench/memory_strategies.py --models sd15,dit --steps 2 --size 512 \
        --out bench/results/memory_strategies.json
    python3 bench/memory_strategies.py --models dit --dit .cache/dit/flux1-dev-random.safetensors \
        --dit-family flux --size 512 --steps 2 --out bench/results/memory_strategies_flux.json
    python3 bench/memory_strategies.py --gpu-table
Defaults use the full-size random SD1.5 (.cache/sd15-random.safetensors) and the full-width
Z-Image transformer from shared/reference/make_dit_random.py (.cache/dit/zimage-random.safetensors).
Memory: every worker keeps the whole model in host memory (the store it streams and shards from),
so a full-size run needs about 3 x the fp32 model in RAM. `--tiny` runs the test models instead.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("resident", "streamed", "shard", "layersplit")


def _job(handle, family: str, size: int, steps: int, reference):
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    if family == "sd1":
        latent = torch.zeros(1, 4, size // 8, size // 8)
        cond = [[torch.randn(1, 77, reference["sd_width"], generator=torch.Generator().manual_seed(1)), {}]]
        cfg = 7.0
    elif family == "flux":          # T5 context, pooled CLIP vector and guidance of the file's widths
        from diffmesh.benchmarks.costmodel import flux_conditioning

        latent = torch.zeros(1, 16, size // 8, size // 8)
        cond, cfg = flux_conditioning(handle.path), 1.0
    else:
        latent = torch.zeros(1, 16, size // 8, size // 8)
        width = reference["context_width"]
        cond = [[torch.randn(1, 32, width, generator=torch.Generator().manual_seed(1)), {}]]
        cfg = 1.0
    sigmas = ksampler_sigmas(model_sampling_for(handle), "simple", "euler", steps, 1.0)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 1, None), sigmas=sigmas, sampler_name="euler",
                     cfg=cfg, positive=cond, negative=cond, seed=1)


def _model_bytes(handle) -> int:
    from diffmesh.engine.explain import job_facts

    return job_facts(handle, _Shape(), 4).total_bytes


class _Shape:                      # job_facts reads only the latent shape and cfg for the sizes
    latent = torch.zeros(1, 4, 8, 8)
    cfg = 1.0


def _run(strategy: str, handle, job, budget: int, steps: int) -> dict:
    from diffmesh.benchmarks import link
    from diffmesh.engine.engine import Engine
    from diffmesh.engine.explain import memory_plan
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.multiproc import MultiProcessExecutor

    workers = 2 if strategy in ("shard", "layersplit") else 1
    settings = {} if strategy == "resident" else {"vram_budget": budget}
    if strategy == "streamed":
        settings["vram_mode"] = "lowvram"
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings=settings)
                                     for i in range(workers)], start_timeout=300)
    executor.start()
    try:
        lines: list[str] = []
        engine = Engine(executor, parallel="none" if workers == 1 else strategy)
        memory_plan(engine, handle, job, engine.parallel, engine.plan(handle, job), lines.append)
        engine.sample(handle, job)                              # load and warm up
        # the link among the two workers, just before and just after the timed run (the load may change)
        probes = [link.measure_link(engine, (0, 1))] if workers == 2 else []
        start = time.perf_counter()
        engine.sample(handle, job)
        seconds = (time.perf_counter() - start) / steps
        probes += [link.measure_link(engine, (0, 1))] if workers == 2 else []
        peaks = [executor.call(w, "memory_stats").result()["peak"] for w in range(workers)]
        return {"strategy": strategy, "workers": workers, "step_s": round(seconds, 3), "peak_accounted": peaks,
                "explain": lines[-1] if lines else "", "link_probes": probes}
    finally:
        executor.shutdown(timeout=10)


def _run_or_say(strategy: str, handle, job, budget: int, steps: int) -> dict:
    """`_run`, or the strategy with the error that stopped it (a budget it cannot meet is a result)."""
    from diffmesh.errors import DeviceOutOfMemory

    try:
        return _run(strategy, handle, job, budget, steps)
    except DeviceOutOfMemory as exc:
        return {"strategy": strategy, "step_s": None, "error": str(exc).splitlines()[0]}


def _link(runs: list[dict]):
    """The link figures for the predictions: every probe of this model's two-worker runs combined
    (`link.combine`), or the documented table's when none ran."""
    from diffmesh.benchmarks import link
    from diffmesh.engine.explain import LinkFigures, documented_link

    probes = [p for r in runs for p in r.pop("link_probes", [])]
    if not probes:
        return documented_link("cpu", "not measured: no two-worker run"), {"source": "documented"}
    both = link.combine(probes)
    figures = LinkFigures(both["latency_s"], both["peer_bw_bytes_per_s"], True, f"{len(probes)} probes of workers 0, 1")
    return figures, {"source": "measured", **both,
                     "median_s_by_size": [p["median_s_by_size"] for p in probes]}


def _predicted(handle, job, budget: int, resident_s: float, link) -> dict[str, float]:
    """The cost model's step times with the measured resident step time as compute time and the
    measured link (`_link`)."""
    from dataclasses import replace

    from diffmesh.engine import costmodel
    from diffmesh.engine.explain import device_facts, job_facts

    facts = job_facts(handle, job, 4)
    device = replace(device_facts("cpu", 1, budget, link), step_s=resident_s)
    preds = {p.strategy: p for p in costmodel.predict(facts, device, 2, float(job.cfg))}
    return {s: round(preds[s].step_s, 3) for s in STRATEGIES if s in preds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="sd15,dit")
    parser.add_argument("--sd15", default=str(ROOT / ".cache" / "sd15-random.safetensors"))
    parser.add_argument("--dit", default=str(ROOT / ".cache" / "dit" / "zimage-random.safetensors"))
    parser.add_argument("--dit-family", default="zimage")
    parser.add_argument("--tiny", action="store_true", help="the tiny test models (a quick check of the script)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--budget-fraction", type=float, default=0.75)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--gpu-table", action="store_true", help="only the GPU predictions beside published figures")
    parser.add_argument("--out", default="bench/results/memory_strategies.json")
    args = parser.parse_args(argv)

    from diffmesh.engine import costmodel

    report: dict = {"machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                                "torch": torch.__version__}, "gpu_predictions": costmodel.gpu_predictions()}
    if not args.gpu_table:
        from diffmesh.models.handle import ModelHandle

        if args.tiny:
            info = json.loads((ROOT / ".cache" / "test-models" / "complete.json").read_text())
            paths = {"sd15": info["checkpoints"]["sd1"], "dit": info["flux"]["flux_dev"]}
            families = {"sd15": "sd1", "dit": "flux"}
        else:
            paths, families = {"sd15": args.sd15, "dit": args.dit}, {"sd15": "sd1", "dit": args.dit_family}
        report["runs"] = []
        for name in args.models.split(","):
            handle = ModelHandle(paths[name], "unet", families[name])
            reference = {"context_width": 64 if args.tiny else 2560, "sd_width": 32 if args.tiny else 768}
            job = _job(handle, families[name], args.size, args.steps, reference)
            size = _model_bytes(handle)
            budget = int(size * args.budget_fraction)
            runs = [_run_or_say(s, handle, job, budget, args.steps) for s in args.strategies.split(",")]
            resident = next((r["step_s"] for r in runs if r["strategy"] == "resident"), None)
            link, link_record = _link(runs)
            predicted = _predicted(handle, job, budget, resident, link) if resident else {}
            for r in runs:
                r["predicted_s"] = predicted.get(r["strategy"])
            report["runs"].append({"model": name, "path": paths[name], "weights_bytes": size, "budget": budget,
                                   "size": args.size, "steps": args.steps, "link": link_record, "results": runs})
            print(json.dumps(report["runs"][-1], indent=1), file=sys.stderr)
            print(f"{name}: predictions with {link.describe()}", file=sys.stderr)
    from diffmesh.benchmarks.report import write_report

    write_report(args.out, report, echo=False)
    for row in report["gpu_predictions"]:
        if row["anchor"]:
            print(f"{row['model']:<24} {row['setup']:<20} x{row['devices']}: predicted {row['best']} "
                  f"{row['speedup']}x ({row['step_s']} s/step)   published: {row['anchor']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

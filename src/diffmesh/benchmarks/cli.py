"""`diffmesh bench`: 1 worker vs N workers in one run, each strategy; JSON out.

Setups run one after another (never at once, so each has the machine to itself):
  base    1 worker, `--threads-per-worker` threads (1)        the reference
  multi   N workers, the same threads each                   cfg / batch / queue / patch parallel
  wide    1 worker with N x threads (CPU only)               "one process using every core"
Ratios: speed-up = reference time / parallel time; efficiency = speed-up / N.
costmodel (only when named in --scenarios): N fresh workers run every strategy that applies to one
image of the model, beside the cost model's prediction from measured compute and link figures
(`benchmarks.costmodel`); `--checkpoint` may be a Flux transformer file with `--family flux`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

SCENARIOS = ("latency", "batch", "queue", "wide", "patch")
EXTRA = ("costmodel",)      # asked for by name only: its own workers, every strategy of one model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file (default: .cache/sd15-random.safetensors, made if missing); "
                             "costmodel also takes a Flux transformer file (--family flux)")
    parser.add_argument("--family", default="sd1", help="model family of the checkpoint")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="worker device kind")
    parser.add_argument("--cpu", dest="device", action="store_const", const="cpu", help="same as --device cpu")
    parser.add_argument("--workers", type=int, default=2, help="number of workers in the parallel setup")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per CPU worker")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the batch scenario")
    parser.add_argument("--prompts", type=int, default=4, help="prompts in the queue scenario")
    parser.add_argument("--clients", type=int, default=2, help="client threads sending the queue prompts")
    parser.add_argument("--repeats", type=int, default=1,
                        help="costmodel: rounds over the strategies (alternating; the best round counts)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS + EXTRA)} (costmodel: only when named)")
    parser.add_argument("--out", default="bench/results/multidevice.json", help="JSON file to write")


def _checkpoint(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return args.checkpoint
    path = Path(".cache") / "sd15-random.safetensors"
    if not path.exists():
        from diffmesh.models.testmodels import make_test_model

        print(f"writing the full-size random SD1.5 to {path} ...", file=sys.stderr)
        make_test_model("sd15", "full", path)
    return str(path)


def _machine() -> dict[str, Any]:
    import torch

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def _ratio(base: float, other: float) -> float:
    return round(base / other, 3) if other else float("nan")


def _run_setup(name, devices, threads, work, args, wanted, out) -> None:
    from diffmesh.benchmarks import scenarios
    from diffmesh.benchmarks.harness import Setup, warm_up

    print(f"[{name}] starting {len(devices)} worker(s) on {devices[0]} with {threads} thread(s) each",
          file=sys.stderr, flush=True)
    with Setup(name, devices, threads) as setup:
        result: dict[str, Any] = {**setup.info, "load_avg_before": os.getloadavg()}
        result["warm_up_s"] = round(warm_up(setup, work), 2)
        many = len(devices) > 1
        if "latency" in wanted and name != "wide":
            result["latency"] = scenarios.latency(setup, work, "cfg" if many else "none")
            print(f"[{name}] latency {result['latency']['total_s']:.2f} s", file=sys.stderr, flush=True)
        if "patch" in wanted and many and name != "wide":      # exact patch parallel: the same image, rows split
            result["patch"] = scenarios.latency(setup, work, "patch")
            print(f"[{name}] patch {result['patch']['total_s']:.2f} s", file=sys.stderr, flush=True)
        if "batch" in wanted and name != "wide":
            result["batch"] = scenarios.batch(setup, work, args.batch, "batch" if many else "none")
            print(f"[{name}] batch {result['batch']['sample_s']:.2f} s", file=sys.stderr, flush=True)
        if "queue" in wanted or ("wide" in wanted and name == "wide"):
            result["queue"] = scenarios.queue(setup, work, args.prompts, args.clients)
            print(f"[{name}] queue {result['queue']['wall_s']:.2f} s", file=sys.stderr, flush=True)
        result["load_avg_after"] = os.getloadavg()
        out[name] = result


def _summary(results: dict[str, Any], n: int) -> dict[str, Any]:
    base, multi, wide = results.get("base", {}), results.get("multi", {}), results.get("wide", {})
    summary: dict[str, Any] = {}
    if "latency" in base and "latency" in multi:
        sp = _ratio(base["latency"]["step_s"], multi["latency"]["step_s"])
        summary["cfg_parallel_step"] = {"speedup": sp, "efficiency": round(sp / n, 3)}
        sp = _ratio(base["latency"]["total_s"], multi["latency"]["total_s"])
        summary["cfg_parallel_image_latency"] = {"speedup": sp, "efficiency": round(sp / n, 3)}
    if "latency" in base and "patch" in multi:     # the 1-worker latency run is the reference
        sp = _ratio(base["latency"]["step_s"], multi["patch"]["step_s"])
        summary["patch_parallel_step"] = {"speedup": sp, "efficiency": round(sp / n, 3)}
        sp = _ratio(base["latency"]["total_s"], multi["patch"]["total_s"])
        summary["patch_parallel_image_latency"] = {"speedup": sp, "efficiency": round(sp / n, 3)}
    if "batch" in base and "batch" in multi:
        sp = _ratio(base["batch"]["sample_s"], multi["batch"]["sample_s"])
        summary["batch_parallel"] = {"speedup": sp, "efficiency": round(sp / n, 3)}
    if "queue" in base and "queue" in multi:
        sp = _ratio(base["queue"]["wall_s"], multi["queue"]["wall_s"])
        summary["queue_parallel"] = {"speedup": sp, "efficiency": round(sp / n, 3)}
    if "queue" in wide and "queue" in multi:
        summary["queue_workers_vs_one_wide_process"] = {"speedup": _ratio(wide["queue"]["wall_s"],
                                                                          multi["queue"]["wall_s"])}
    return summary


def run(args: argparse.Namespace) -> int:
    from diffmesh.benchmarks.harness import Workload

    wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    unknown = wanted - set(SCENARIOS + EXTRA)
    if unknown:
        print(f"diffmesh bench: unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS + EXTRA}",
              file=sys.stderr)
        return 2
    n = args.workers
    work = Workload(checkpoint=_checkpoint(args), family=args.family, size=args.size, steps=args.steps,
                    cfg=args.cfg, sampler=args.sampler)
    cpu = args.device == "cpu"
    threads = args.threads_per_worker if cpu else None
    devices = ["cpu"] * n if cpu else [f"cuda:{i}" for i in range(n)]
    started = time.time()
    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    if wanted - set(EXTRA):
        _run_setup("base", devices[:1], threads, work, args, wanted, results)
        _run_setup("multi", devices, threads, work, args, wanted, results)
    if cpu and "wide" in wanted:
        _run_setup("wide", ["cpu"], threads * n, work, args, wanted, results)
    summary = _summary(results, n)
    if "costmodel" in wanted:
        from diffmesh.benchmarks.costmodel import run_costmodel, summary as costmodel_summary

        print(f"[costmodel] {n} worker(s), {args.device}, {args.size}px, {args.steps} steps, cfg {args.cfg}",
              file=sys.stderr, flush=True)
        results["costmodel"] = run_costmodel(work, args.device, n, threads, args.repeats)
        summary["costmodel"] = costmodel_summary(results["costmodel"])
    report = {"machine": _machine(), "workload": work.__dict__, "workers": n, "batch": args.batch,
              "prompts": args.prompts, "clients": args.clients, "started": started,
              "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
              "wall_s": round(time.time() - started, 1), "results": results, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["summary"], indent=1))
    print(f"written to {out}", file=sys.stderr)
    return 0

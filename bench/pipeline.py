"""Layer split's micro-batch pipeline on CPU workers: per-step time of layer split over 2 one-thread
workers, serial (`DIFFMESH_MICRO_BATCHES=1`) vs pipelined (one micro-batch per row), at batch 2 and
4, with the workers' CPU seconds beside the wall time. JSON out.

    python3 bench/pipeline.py --out bench/results/pipeline.json          # full-size SD1.5, 512², cfg 1
    python3 bench/pipeline.py --tiny --size 256 --steps 2                # the test model: a check of the script

Defaults: the full-size random SD1.5 (.cache/sd15-random.safetensors) at 512², euler, 2 steps,
cfg 1 (so a model call has `batch` rows; `--cfg 7` doubles them), each worker's budget 0.75 x the
UNet's weights (so neither holds it whole). Memory: each worker keeps the whole UNet in host memory
(the store layer split places from): about 3 x the fp32 UNet (10 GB for SD1.5) in RAM.
Both modes run in the same two worker processes, alternating (serial, pipelined, serial, ...), each
after one warm-up; `--repeats` takes the median. Ideal speed-up of the pipeline with W workers and M
micro-batches over serial: M*W / (M + W - 1) (4/3 for 2 x 2, 8/5 for 2 x 4), less the extra cost of
smaller matrix products and of the messages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = "DIFFMESH_MICRO_BATCHES"


def _job(handle, batch: int, size: int, steps: int, cfg: float, width: int):
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    latent = torch.zeros(batch, 4, size // 8, size // 8)
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, width, generator=g), {}]]
    negative = [[torch.randn(1, 77, width, generator=g), {}]]
    sigmas = ksampler_sigmas(model_sampling_for(handle), "normal", "euler", steps, 1.0)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 1, None), sigmas=sigmas, sampler_name="euler",
                     cfg=cfg, positive=positive, negative=negative, seed=1)


def _cpu_seconds(pids: list[int]) -> float:
    """The workers' CPU seconds together."""
    from diffmesh.benchmarks.clock import cpu_seconds

    return sum(cpu_seconds(pid) for pid in pids)


def _machine_cpu() -> float:
    """Seconds of CPU the whole machine used (all processes), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))     # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _sample(engine, executor, handle, job, pids, mode: str, steps: int) -> dict:
    if mode == "serial":
        os.environ[ENV] = "1"
    else:
        os.environ.pop(ENV, None)
    cpu, machine, start = _cpu_seconds(pids), _machine_cpu(), time.perf_counter()
    result = engine.sample(handle, job)
    wall = time.perf_counter() - start
    cpu, machine = _cpu_seconds(pids) - cpu, _machine_cpu() - machine
    layouts = [next(c["layout"] for c in executor.call(w, "memory_stats").result()["components"] if "layout" in c)
               for w in range(len(pids))]
    last = layouts[0]["pipeline"]["last_call"]
    return {"step_s": wall / steps, "cpu_s_per_step": cpu / steps,
            "other_load_cores": max(0.0, (machine - cpu) / wall), "micro_batches": last["micro_batches"],
            "rows": last["rows"], "latent_norm": float(result.norm()),
            "blocks_per_worker": layouts[0]["blocks_per_rank"], "balance": layouts[0]["pipeline"]["balance"],
            "held_bytes": [layout["held_bytes"] for layout in layouts]}


def run(args) -> dict:
    from diffmesh.engine.engine import Engine
    from diffmesh.engine.explain import job_facts
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.multiproc import MultiProcessExecutor
    from diffmesh.models.handle import ModelHandle

    if args.tiny:
        info = json.loads((ROOT / ".cache" / "test-models" / "complete.json").read_text())
        path, width = info["checkpoints"]["sd1"], 32
    else:
        path, width = args.sd15, 768
    handle = ModelHandle(path, "unet", "sd1")
    weights = job_facts(handle, _job(handle, 1, 64, 1, 1.0, width), 4).total_bytes
    budget = int(weights * args.budget_fraction)
    settings = {"vram_budget": budget}
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings=settings)
                                     for i in range(2)], start_timeout=300)
    executor.start()
    runs = []
    try:
        pids = [executor.call(w, "ping").result()["pid"] for w in range(2)]
        engine = Engine(executor, parallel="layersplit")
        for batch in [int(b) for b in args.batches.split(",")]:
            job = _job(handle, batch, args.size, args.steps, args.cfg, width)
            samples: dict[str, list[dict]] = {"serial": [], "pipelined": []}
            for mode in ("serial", "pipelined"):                  # warm-up: loads, first calls
                _sample(engine, executor, handle, job, pids, mode, args.steps)
            for _ in range(args.repeats):
                for mode in ("serial", "pipelined"):
                    samples[mode].append(_sample(engine, executor, handle, job, pids, mode, args.steps))
            row = {"batch": batch, "cfg": args.cfg}
            for mode, got in samples.items():
                row[mode] = {"step_s": round(statistics.median(s["step_s"] for s in got), 3),
                             "cpu_s_per_step": round(statistics.median(s["cpu_s_per_step"] for s in got), 3),
                             "other_load_cores": round(max(s["other_load_cores"] for s in got), 2),
                             "micro_batches": got[-1]["micro_batches"], "rows_per_call": got[-1]["rows"],
                             "blocks_per_worker": got[-1]["blocks_per_worker"], "held_bytes": got[-1]["held_bytes"],
                             "balance": got[-1]["balance"],
                             "all_step_s": [round(s["step_s"], 3) for s in got]}
            row["speedup"] = round(row["serial"]["step_s"] / row["pipelined"]["step_s"], 3)
            same = samples["serial"][-1]["latent_norm"], samples["pipelined"][-1]["latent_norm"]
            row["latent_norm_rel_diff"] = abs(same[0] - same[1]) / max(abs(same[0]), 1e-30)
            runs.append(row)
            print(json.dumps(row), file=sys.stderr)
    finally:
        os.environ.pop(ENV, None)
        executor.shutdown(timeout=10)
    return {"model": path, "weights_bytes": weights, "budget_bytes": budget, "size": args.size,
            "steps": args.steps, "workers": 2, "threads_per_worker": 1, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd15", default=str(ROOT / ".cache" / "sd15-random.safetensors"))
    parser.add_argument("--tiny", action="store_true", help="the tiny test SD1 model (a quick check of the script)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batches", default="2,4")
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--budget-fraction", type=float, default=0.75)
    parser.add_argument("--out", default="bench/results/pipeline.json")
    args = parser.parse_args(argv)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "args": vars(args), **run(args)}
    from diffmesh.benchmarks.report import write_report

    write_report(args.out, report, echo=False)
    for row in report["runs"]:
        print(f"batch {row['batch']} cfg {row['cfg']}: serial {row['serial']['step_s']} s/step "
              f"({row['serial']['cpu_s_per_step']} CPU s), pipelined {row['pipelined']['step_s']} s/step "
              f"({row['pipelined']['cpu_s_per_step']} CPU s, {row['pipelined']['micro_batches']} micro-batches): "
              f"{row['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`diffmesh bench --scenarios costmodel`: the cost model's predicted step time per strategy beside
the step time measured on these workers, in one run.

For one model, image size and cfg, on N workers (one torch thread each on CPU):
  1. inputs the cost model needs, measured here: one worker's step time (`--parallel none`, the
     compute term `DeviceFacts.step_s`); the same at the smallest latent (SMALL_SIZE px), the part
     of a forward that a split does not divide (`DeviceFacts.fixed_s`: Python dispatch and per-layer
     calls, which dominate small models and small images); and the link among the workers
     (`benchmarks.link`: all-gathers through the same group sequence and patch parallel exchange
     in; `latency`, `peer_bw`);
  2. the cost model's prediction (`engine.costmodel.predict`) for every strategy that applies:
     resident, cfg (cfg != 1), sequence (diffusion transformers), cfg_sequence (transformers, cfg != 1,
     4+ workers), patch (SD UNets), shard and layersplit. The file header gives the model's facts
     (`engine.explain.job_facts`); the measured figures replace the documented device/link table;
  3. each of those strategies run for real (`--parallel X`), in rounds that alternate the strategies
     so a change in machine load hits all alike. Every run starts with the models unloaded (only one
     strategy's weights are held at a time); its first step loads them, so the step time is the mean
     of the later steps (`--steps` 2 or more). Beside wall time, the busiest worker's CPU seconds per
     step (utime + stime from /proc): waiting in an exchange is not CPU time;
  4. per strategy predicted vs measured (best round) and their ratio, in wall seconds and in CPU
     seconds (the prediction again with the CPU-second compute terms, against the busiest worker's
     CPU seconds per step, or the workers' sum for layersplit, whose members compute in turn): on a
     shared machine wall time follows the load, CPU time far less; what the planner picks with
     `--parallel auto` (and its `--explain` table, which uses the documented figures), what the cost
     model picks from the measured figures, and which strategy was measured fastest.
streamed and donor are not run: they apply to models larger than a device's budget (see
bench/memory_strategies.py); batch split needs a batch of two or more and is not a one-image strategy.
"""

from __future__ import annotations

import sys
import time
import math
from dataclasses import asdict, replace
from typing import Any

import torch

from diffmesh.benchmarks import link
from diffmesh.benchmarks.clock import cpu_seconds
from diffmesh.benchmarks.harness import Setup, StepClock, Workload, make_job
from diffmesh.engine import costmodel
from diffmesh.models.handle import ModelHandle

MODES = {"resident": "none", "cfg": "cfg", "sequence": "sequence", "cfg_sequence": "sequence",
         "patch": "patch", "shard": "shard", "layersplit": "layersplit"}
PLAN_NAMES = {"single": "resident"}        # the planner's name -> the cost model's
SMALL_SIZE = 64                            # px: the smallest latent every family splits (8 x 8)
SERIAL = ("layersplit",)                   # members compute in turn: CPU time adds up over them


def applicable(kind: str, family: str, cfg: float, workers: int) -> list[str]:
    """The strategies of the cost model that run one image of this model on `workers` workers."""
    from diffmesh.parallel import patch as patch_parallel
    from diffmesh.parallel import sequence as sequence_parallel

    out = ["resident"]
    if workers < 2:
        return out
    if cfg != 1.0:
        out.append("cfg")
    if kind == "dit" and family in sequence_parallel.FAMILIES:
        out.append("cfg_sequence" if cfg != 1.0 and workers >= 4 else "sequence")
    if kind == "unet" and family in patch_parallel.FAMILIES:
        out.append("patch")
    return out + ["shard", "layersplit"]


def flux_conditioning(path: str) -> list:
    """Random conditioning of the shapes a Flux transformer file takes (no text encoder in the file)."""
    from diffmesh.models import detect

    shapes = detect.read_shapes(path)
    context = next(s for k, s in shapes.items() if k.endswith("txt_in.weight"))[1]
    pooled = next(s for k, s in shapes.items() if k.endswith("vector_in.in_layer.weight"))[1]
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(1, 256, context, generator=g), {"pooled_output": torch.randn(1, pooled, generator=g),
                                                         "guidance": 3.5}]]


def build_job(engine: Any, work: Workload, kind: str):
    """(model handle, job): a checkpoint's own text encoder encodes the prompts (as the KSampler
    node's inputs); a Flux transformer file gets random conditioning of its shapes."""
    if kind == "unet":
        return work.handles()["unet"], make_job(engine, work, 1, seed=42)
    if work.family != "flux":
        raise SystemExit(f"diffmesh bench costmodel: the {work.family!r} transformer needs conditioning this "
                         "scenario does not build; use an SD checkpoint (--family sd1|sd2|sdxl) or a Flux "
                         "transformer file (--family flux)")
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    handle = ModelHandle(work.checkpoint, "unet", "flux")
    cond = flux_conditioning(work.checkpoint)
    latent = torch.zeros(1, 16, work.size // 8, work.size // 8)
    sigmas = ksampler_sigmas(model_sampling_for(handle), "simple", work.sampler, work.steps, 1.0)
    return handle, SampleJob(latent=latent, noise=prepare_noise(latent, 42, None), sigmas=sigmas,
                             sampler_name=work.sampler, cfg=work.cfg, positive=cond, negative=cond, seed=42)


def measure(engine: Any, handle: ModelHandle, job: Any, mode: str, unload: bool = True) -> dict[str, Any]:
    """One run of `job` with `--parallel mode`, models unloaded first (`unload`): the mean wall and
    CPU time of the steps after the first (which loads the weights), and the plan that ran."""
    if unload:
        engine.free(True)
    engine.parallel = mode
    pid_of = getattr(engine.executor, "pid", lambda w: None)
    pids = [pid_of(w) for w in engine.worker_ids]
    clock = StepClock()
    cpu = [[cpu_seconds(p) for p in pids]]

    def progress(event: dict) -> None:
        clock(event)
        if event.get("type", "progress") == "progress":
            cpu.append([cpu_seconds(p) for p in pids])

    start = time.perf_counter()
    engine.sample(handle, job, progress)
    elapsed = time.perf_counter() - start
    steps = [b - a for a, b in zip([start] + clock.times, clock.times)]
    plan = engine.last_plan
    name = PLAN_NAMES.get(plan.strategy, plan.strategy)
    combine = sum if name in SERIAL else max             # CPU seconds of the step: see the module doc
    per_step = [combine(b - a for a, b in zip(x, y)) for x, y in zip(cpu, cpu[1:])]
    later = per_step[1:] or per_step
    return {"strategy": name, "workers": list(plan.workers), "reason": plan.reason,
            "step_s": clock.per_step() or elapsed / max(1, len(steps)),
            "steps_s": [round(s, 4) for s in steps],
            "cpu_step_s": sum(later) / len(later) if later else None, "sampling_s": round(elapsed, 4)}


def predictions(handle: ModelHandle, job: Any, device: str, workers: int, step_s: float, fixed_s: float,
                link_figures: dict[str, Any]) -> tuple[costmodel.ModelFacts, costmodel.DeviceFacts, list]:
    """The cost model's predictions with the measured compute and link figures."""
    from diffmesh.engine.explain import DEFAULT_FACTS, device_facts, job_facts

    base = DEFAULT_FACTS["cuda" if device.startswith("cuda") else "cpu"]
    facts = job_facts(handle, job, base["bytes_per"])
    dev = replace(device_facts(device, 1, None), step_s=step_s, fixed_s=fixed_s,
                  peer_bw=link_figures["peer_bw_bytes_per_s"], latency=link_figures["latency_s"])
    return facts, dev, costmodel.predict(facts, dev, workers, float(job.cfg))


def _planner(engine: Any, handle: ModelHandle, job: Any) -> dict[str, Any]:
    """What `--parallel auto` picks for this job, and its `--explain` text (documented figures)."""
    lines: list[str] = []
    engine.parallel, engine.explain = "auto", lines.append
    try:
        plan = engine.plan(handle, job)
    finally:
        engine.explain = None
    return {"strategy": PLAN_NAMES.get(plan.strategy, plan.strategy), "workers": list(plan.workers),
            "reason": plan.reason, "explain": lines[-1] if lines else ""}


def _compare(wanted: list[str], preds: list, cpu_preds: list, runs: dict[str, list[dict]]) -> dict[str, Any]:
    by_name = {p.strategy: p for p in preds}
    cpu_by_name = {p.strategy: p.step_s for p in cpu_preds}
    out = {}
    for name in wanted:
        measured = [r for r in runs.get(name, []) if r["strategy"] == name]
        best = min(measured, key=lambda r: r["step_s"]) if measured else None
        pred = by_name.get(name)
        predicted = None if pred is None else pred.step_s
        other = [r for r in runs.get(name, []) if r["strategy"] != name]
        note = "" if pred is None else pred.note
        if other and not measured:          # e.g. too few latent rows for patch bands: the engine ran single
            note = f"not measured: --parallel {MODES[name]} ran {other[0]['strategy']} ({other[0]['reason']})"
        cpu_best = min((r["cpu_step_s"] for r in measured if r["cpu_step_s"] is not None), default=None)
        cpu_predicted = cpu_by_name.get(name)
        row = {"predicted_s": None if predicted is None else round(predicted, 5),
               "measured_s": None if best is None else round(best["step_s"], 5),
               "ratio_measured_to_predicted": (None if best is None or not predicted
                                               else round(best["step_s"] / predicted, 3)),
               "predicted_cpu_s": None if cpu_predicted is None else round(cpu_predicted, 5),
               "measured_cpu_s": None if cpu_best is None else round(cpu_best, 5),
               "ratio_cpu": None if cpu_best is None or not cpu_predicted else round(cpu_best / cpu_predicted, 3),
               "note": note, "runs": runs.get(name, [])}
        out[name] = row
    return out


def _say(text: str) -> None:
    print(f"[costmodel {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: an unlimited budget or link is written as null."""
    return {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in values.items()}


def _calibrate(engine: Any, handle: ModelHandle, job: Any, work: Workload, kind: str) -> dict[str, float]:
    """The compute terms on one worker: the job's step time and the step at SMALL_SIZE (the fixed part)."""
    calibration = measure(engine, handle, job, "none")
    _say(f"one worker (compute term): {calibration['steps_s']} s per step")
    small = measure(engine, handle, build_job(engine, replace(work, size=SMALL_SIZE), kind)[1], "none", unload=False)
    _say(f"one worker at {SMALL_SIZE} px (fixed term): {small['steps_s']} s per step")
    return {"compute_step_s": calibration["step_s"], "compute_cpu_step_s": calibration["cpu_step_s"] or 0.0,
            "fixed_step_s": min(small["step_s"], calibration["step_s"]),
            "fixed_cpu_step_s": min(small["cpu_step_s"] or 0.0, calibration["cpu_step_s"] or 0.0),
            "small_size": SMALL_SIZE}


def _link(engine: Any, ids: tuple[int, ...]) -> dict[str, Any]:
    if len(ids) < 2:
        return {"latency_s": 0.0, "peer_bw_bytes_per_s": float("inf")}
    figures = link.measure_link(engine, ids)
    _say(f"link: {figures['latency_s'] * 1e3:.2f} ms per collective, {figures['peer_bw_bytes_per_s'] / 1e6:.0f} MB/s")
    return figures


def run_costmodel(work: Workload, device: str, workers: int, threads: int | None, repeats: int) -> dict[str, Any]:
    """The whole scenario on `workers` fresh workers of `device` kind; plain data. The link is probed
    before and after the runs; the predictions use both (`link.combine`), as the load may change."""
    from diffmesh.engine.explain import _kind

    kind = _kind(work.family)
    wanted = applicable(kind, work.family, float(work.cfg), workers)
    devices = ["cpu"] * workers if device == "cpu" else [f"cuda:{i}" for i in range(workers)]
    _say(f"starting {workers} worker(s); strategies {', '.join(wanted)}")
    with Setup("costmodel", devices, threads) as setup:
        engine = setup.engine
        _say(f"workers ready in {setup.info['start_s']} s")
        handle, job = build_job(engine, work, kind)
        ids = tuple(engine.worker_ids)
        probes = [_link(engine, ids)]
        inputs = _calibrate(engine, handle, job, work, kind)
        planner = _planner(engine, handle, job)
        runs: dict[str, list[dict]] = {}
        for _ in range(repeats):
            for name in wanted:
                runs.setdefault(name, []).append(measure(engine, handle, job, MODES[name]))
                _say(f"{name}: {runs[name][-1]['strategy']} {runs[name][-1]['steps_s']} s per step")
        probes.append(_link(engine, ids))
        engine.free(True)
    link_figures = link.combine(probes)
    facts, dev, preds = predictions(handle, job, devices[0], workers, inputs["compute_step_s"],
                                    inputs["fixed_step_s"], link_figures)
    cpu_preds = predictions(handle, job, devices[0], workers, inputs["compute_cpu_step_s"],
                            inputs["fixed_cpu_step_s"], link_figures)[2]
    table = _compare(wanted, preds, cpu_preds, runs)
    chosen = costmodel.choose(preds, tuple(wanted))

    def fastest(key: str) -> str | None:
        measured = {k: v[key] for k, v in table.items() if v[key] is not None}
        return min(measured, key=measured.get) if measured else None
    return {"model": {"path": work.checkpoint, "family": work.family, "kind": kind,
                      "weights_bytes": facts.total_bytes, "blocks": len(facts.block_bytes),
                      "flops": facts.flops, "hidden_bytes": facts.hidden_bytes,
                      "attention_layers": facts.attention_layers},
            "size": work.size, "steps": work.steps, "cfg": work.cfg, "sampler": work.sampler,
            "workers": workers, "threads_per_worker": threads, "repeats": repeats,
            "inputs": {**inputs, "link": link_figures, "link_probes": probes, "device_facts": _finite(asdict(dev))},
            "strategies": table,
            "planner": planner,
            "cost_model_choice": None if chosen is None else chosen.strategy,
            "measured_fastest": fastest("measured_s"), "measured_fastest_cpu": fastest("measured_cpu_s"),
            "predictions_all": [_finite(p.as_dict()) for p in preds],
            "explain_measured": costmodel.table(preds, None if chosen is None else chosen.strategy)}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The lines to read first: per strategy predicted / measured seconds per step and their ratio."""
    keys = ("predicted_s", "measured_s", "ratio_measured_to_predicted", "predicted_cpu_s", "measured_cpu_s",
            "ratio_cpu")
    return {"per_strategy": {name: {k: row[k] for k in keys}
                             for name, row in result["strategies"].items()},
            "planner": result["planner"]["strategy"], "cost_model_choice": result["cost_model_choice"],
            "measured_fastest": result["measured_fastest"], "measured_fastest_cpu": result["measured_fastest_cpu"],
            "link": {"latency_s": result["inputs"]["link"]["latency_s"],
                     "peer_bw_bytes_per_s": result["inputs"]["link"]["peer_bw_bytes_per_s"]}}

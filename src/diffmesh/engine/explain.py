"""The memory side of planning: does the model fit, and if not, how to run it; `--explain`.

`memory_plan(scope, model, job, mode, plan)` runs after `planner.plan_sample`. It builds the cost
model's inputs for this job (`engine.costmodel`): the model's facts from its file header, each
worker's budget (`--vram-budget`, the workers' `settings`), the documented device figures
(`DEFAULT_FACTS`: a CPU worker's FLOP/s per thread, a CUDA device's) and the link among the
workers. The link is measured (`link_figures`): the first prediction over a set of 2+ workers has
them all-gather a few sizes up to 16 MB through their sequence group (`benchmarks.link`, ~0.5 s on
loopback), and the fitted latency and bandwidth are kept on the engine (`Engine.links`, by worker
set) for every later job. With one worker, or when the probe fails (the failure is kept too, so it
is not retried per job), the documented link stands in (`DEFAULT_LINK`: gloo loopback for CPU
workers, PCIe 4 for CUDA). The measurement runs only when a prediction over 2+ workers is needed:
with `explain`, or in `auto` mode when the model does not fit.
The facts carry the family, tokens, width and rows, so the activations that count against the
budget come from the table measured per family and resolution (`engine.activations`).
In `auto` mode, when the model plus its activations does not fit the main worker's budget and
there are two or more workers, the fastest predicted of streamed (one worker), sharded and layer
split that fits is chosen; a model that fits keeps the planner's choice. `--parallel X` and a
`MultiGPU_WorkUnits` node override it, and so does a loader's `device` input (it picks the main
worker the plan starts from). With `explain` set, the predictions table and the choice are
written for every sampling job (`print` to stderr by the CLI's `--explain`), its last line saying
which link figures it used ("link: measured 0.78 ms per collective, 154 MB/s (...)" or "link:
documented ...").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from diffmesh.engine import costmodel
from diffmesh.engine.planner import SamplePlan, _pooled

log = logging.getLogger("diffmesh.engine")

# fp32 FLOP/s one CPU thread reaches on a forward, by model kind (the FLOPs as `costmodel` counts them),
# measured on this project's CI machine (2026-12-02): full-size SD1.5 at 512^2 and 1024^2 (16.9 s and
# 102.6 s per row: 48 and 46 GFLOP/s; convolutions), the Flux reference transformer at 512^2 and
# 1024^2 (12.7 s and 46.2 s: 91 and 110 GFLOP/s; large matrix products)
CPU_FLOPS_PER_THREAD = {"unet": 4.7e10, "dit": 1.0e11}
DEFAULT_LINK = {"cpu": "gloo-loopback", "cuda": "pcie4"}     # costmodel.LINKS entry when none is measured
DEFAULT_FACTS = {
    "cpu": {"host_bw": 5e9, "peer_bw": costmodel.LINKS[DEFAULT_LINK["cpu"]]["bw"],
            "latency": costmodel.LINKS[DEFAULT_LINK["cpu"]]["latency"], "overlap": 0.0, "bytes_per": 4},
    "cuda": {"flops": costmodel.DEVICES["RTX4090"]["flops"], "host_bw": costmodel.LINKS["pcie4"]["bw"],
             "peer_bw": costmodel.LINKS[DEFAULT_LINK["cuda"]]["bw"],
             "latency": costmodel.LINKS[DEFAULT_LINK["cuda"]]["latency"], "overlap": 1.0, "bytes_per": 2},
}


@dataclass(frozen=True)
class LinkFigures:
    """The link a prediction uses: measured among the job's workers, or the documented table's."""
    latency: float                 # seconds per collective
    peer_bw: float                 # bytes one member receives per second
    measured: bool
    detail: str                    # among which workers, or which table entry and why not measured

    def describe(self) -> str:
        how = "measured" if self.measured else "documented"
        return (f"link: {how} {self.latency * 1e3:.2f} ms per collective, {self.peer_bw / 1e6:.0f} MB/s "
                f"({self.detail})")


def documented_link(device: str, why: str) -> LinkFigures:
    kind = "cuda" if device.startswith("cuda") else "cpu"
    base = DEFAULT_FACTS[kind]
    return LinkFigures(base["latency"], base["peer_bw"], False, f"{DEFAULT_LINK[kind]} table, {why}")


def link_figures(scope: Any, workers: tuple[int, ...], device: str) -> LinkFigures:
    """The link among `workers` (`device`: the main worker's, for the fallback): probed once per
    engine and worker set, kept in `scope.root.links`; the documented table when it cannot be."""
    if len(workers) < 2:
        return documented_link(device, "not measured: one worker")
    cache = scope.root.links
    if workers not in cache:
        cache[workers] = _probe(scope.root, workers)
    found = cache[workers]
    if "error" in found:
        return documented_link(device, f"not measured: {found['error']}")
    largest = max(int(size) for size in found["median_s_by_size"]) / 2**20
    return LinkFigures(found["latency_s"], found["peer_bw_bytes_per_s"], True,
                       f"all-gathers up to {largest:g} MB among workers {', '.join(map(str, workers))}")


def _probe(root: Any, workers: tuple[int, ...]) -> dict[str, Any]:
    """`benchmarks.link.measure_link` with the planner's quick sizes, or {"error": why}."""
    from diffmesh.benchmarks import link

    down = [w for w in workers if not root.executor.is_alive(w)]
    if down:
        return {"error": f"worker {down[0]} is not running"}
    try:
        return link.measure_link(root, workers, link.QUICK_SIZES, link.QUICK_REPEATS)
    except Exception as exc:  # noqa: BLE001 - workers that cannot form a group: the table stands in
        log.warning("link among workers %s not measured (%s: %s); the cost model uses the documented table",
                    workers, type(exc).__name__, exc)
        return {"error": f"the probe failed ({type(exc).__name__}: {exc})"}


def _kind(family: str | None) -> str:
    from diffmesh.models.dit import available_family

    try:
        return "dit" if family and available_family(family) is not None else "unet"
    except Exception:  # noqa: BLE001 - an unknown family name: treat as a UNet
        return "unet"


def job_facts(model: Any, job: Any, bytes_per: int) -> costmodel.ModelFacts:
    """Cost-model facts of `model` for this job, from the file header (no tensor is read)."""
    from diffmesh.models import detect

    kind = _kind(getattr(model, "family", None))
    shapes = detect.read_shapes(model.path)
    if kind == "dit":
        found = detect.dit_family(shapes)
        prefix = found[1] if found else ""
    else:
        prefix = detect.unet_prefix(shapes.keys()) or ""
    part = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    latent = tuple(job.latent.shape)
    rows = latent[0] * (2 if float(job.cfg) != 1.0 else 1)
    frames = latent[2] if len(latent) == 5 else 1
    if kind == "dit":
        tokens = frames * -(-latent[-2] // 2) * -(-latent[-1] // 2)
        widths = [s[-1] for k, s in part.items() if len(s) == 2 and ".0." in k]
        width = max(set(widths), key=widths.count) if widths else 1
    else:
        tokens = latent[-2] * latent[-1]
        width = part.get("input_blocks.0.0.weight", (320,))[0]
    layers = sum(1 for k in part if k.endswith("attn1.to_q.weight"))
    return costmodel.model_facts_from_shapes(part, bytes_per, kind, tokens, width, rows, layers,
                                             getattr(model, "family", None) or "")


def device_facts(device: str, threads: int, budget: float | None,
                 link: LinkFigures | None = None, kind: str = "unet") -> costmodel.DeviceFacts:
    """The documented figures of `device`, with `link`'s latency and bandwidth where given; a CPU
    thread's FLOP/s by the model's `kind` ("unet" or "dit": convolutions run at half the rate)."""
    base = DEFAULT_FACTS["cuda" if device.startswith("cuda") else "cpu"]
    flops = base.get("flops") or CPU_FLOPS_PER_THREAD.get(kind, CPU_FLOPS_PER_THREAD["unet"]) * max(1, threads or 1)
    return costmodel.DeviceFacts(flops=flops, budget=float("inf") if budget is None else float(budget),
                                 host_bw=base["host_bw"], peer_bw=base["peer_bw"] if link is None else link.peer_bw,
                                 latency=base["latency"] if link is None else link.latency, overlap=base["overlap"])


def memory_plan(scope: Any, model: Any, job: Any, mode: str, plan: SamplePlan,
                explain: Callable[[str], None] | None = None) -> SamplePlan:
    workers = scope.workers
    budgets = [w.memory_free for w in workers]
    if explain is None and (mode != "auto" or all(b is None for b in budgets)):
        return plan                              # nothing to decide: no budget known, or the mode is set
    main = next(w for w in workers if w.worker_id == plan.workers[0])
    spec = next((s for s in scope.root.executor.specs if s.worker_id == main.worker_id), None)
    base = DEFAULT_FACTS["cuda" if main.device.startswith("cuda") else "cpu"]
    try:
        facts = job_facts(model, job, base["bytes_per"])
    except Exception as exc:  # noqa: BLE001 - a file without a readable header: keep the plan
        if explain is not None:
            explain(f"cost model: no prediction for {model.path}: {exc}")
        return plan
    known = [b for b in budgets if b is not None]
    threads, budget = getattr(spec, "threads", 1) or 1, min(known) if known else None
    alone = costmodel.predict(facts, device_facts(main.device, threads, budget, kind=facts.kind), 1, float(job.cfg))
    resident = next(p for p in alone if p.strategy == "resident")
    if explain is None and (resident.fits or len(workers) < 2):
        return plan                              # auto and it fits, or nothing to pool: no link to measure
    link = link_figures(scope, tuple(w.worker_id for w in workers), main.device)
    predictions = costmodel.predict(facts, device_facts(main.device, threads, budget, link, facts.kind), len(workers),
                                    float(job.cfg))
    chosen = plan
    if mode == "auto" and not resident.fits and len(workers) >= 2:
        best = costmodel.choose(predictions, ("streamed", "shard", "layersplit"))
        if best is not None and best.strategy in ("shard", "layersplit"):
            chosen = _pooled(best.strategy, workers, main)
    if explain is not None:
        name = {"single": "resident"}.get(chosen.strategy, chosen.strategy)
        if chosen.strategy == "single" and not resident.fits:
            name = "streamed"
        explain(f"plan for {model.path} ({facts.kind}, {facts.total_bytes / 2**20:.1f} MB weights, "
                f"latent {tuple(job.latent.shape)}, cfg {job.cfg}, {len(workers)} workers, --parallel {mode}): "
                f"{chosen.strategy} - {chosen.reason}\n" + costmodel.table(predictions, name) + "\n"
                + link.describe())
    return chosen

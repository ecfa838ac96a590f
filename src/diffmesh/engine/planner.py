"""The planner: which parallel strategy runs one sampling job. Plans are plain data.

Inputs: the workers available to the prompt (count, relative speed, free memory), the workload
(batch size, cfg) and the requested mode (`--parallel auto|none|batch|cfg|queue`, overridden by
a `MultiGPU_WorkUnits` node). In `auto`, each candidate gets a cost estimate in "UNet rows per
unit speed" and the cheapest wins; ties go to the simpler strategy:
  single:   2B rows (cond + uncond; B when cfg == 1) on the main worker;
  batch:    the slowest share, rows split in proportion to speed (`parallel.batch.split_batch`);
  cfg:      B rows on each of the two fastest workers, plus a per-step exchange overhead;
  sequence: (diffusion transformers only) every row on every worker, each with 1/P of the image
            tokens, plus an exchange overhead growing with the worker count (attention exchanges
            in every block); not offered when a worker would hold fewer than MIN_SEQUENCE_TOKENS
            tokens, where the exchanges cost more than the split saves;
  cfg_sequence: (cfg != 1, 4+ workers) cond on one half, uncond on the other, each half
            sequence-split: B rows per half, each worker 2/P of the tokens, both overheads.
  patch:    (SD UNets only) every row on every worker, each with a band of 1/P of the latent rows,
            plus an exchange overhead per extra worker (halo rows, norm statistics, keys and values
            in every block); in auto only when every band gets MIN_PATCH_ROWS latent rows or more.
  batch_patch: (SD UNets, batch >= 2, 3+ workers) the batch split over groups of workers, each
            group's rows patch-split over its members: the slowest group's rows over its members'
            bands, plus the patch overhead of its size. Every group count from 2 up is tried.
  cfg_patch: (SD UNets, cfg != 1, 4+ workers) cond on one half, uncond on the other, each half
            patch-split: the UNet twin of cfg_sequence.
`--parallel sequence` takes the cheaper of sequence and cfg_sequence, `--parallel patch` the cheapest
of patch, batch_patch and cfg_patch (there any whole band goes, not only MIN_PATCH_ROWS rows).
Memory (`--parallel shard|layersplit`, or `auto` through `engine.explain.memory_plan` when the model
does not fit a worker's budget): every worker of the scope, the main one as rank 0 (`_pooled`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from diffmesh.engine.placement import WorkerInfo
from diffmesh.parallel.batch import split_batch

MODES = ("auto", "none", "batch", "cfg", "queue", "sequence", "patch", "shard", "layersplit")
MEMORY_MODES = ("shard", "layersplit")   # models larger than one device: weights pooled over the workers
CFG_EXCHANGE_OVERHEAD = 0.05          # fraction of a step lost to the exchange and lockstep waiting
SEQUENCE_OVERHEAD = 0.10              # per extra worker: fraction of a step lost to the per-block exchanges
MIN_SEQUENCE_TOKENS = 256             # image tokens per worker below which sequence parallel is not offered
PATCH_OVERHEAD = 0.10                 # per extra worker: fraction of a step lost to the halo / norm / K,V exchanges
MIN_PATCH_ROWS = 32                   # latent rows per worker (256 px) below which auto does not offer patch


@dataclass(frozen=True)
class Workload:
    batch: int
    cfg: float
    model_bytes: int | None = None     # for the memory check, when known
    tokens: int = 0                    # image tokens of a diffusion transformer (0: no sequence split)
    batch_coupled: bool = False        # the sampler couples batch items (dpm_adaptive's step control)
    patch_rows: int = 0                # latent rows of a UNet job patch parallel can split (0: not a UNet)
    patch_align: int = 8               # rows per band unit: the UNet's total downsampling factor

    @property
    def uses_uncond(self) -> bool:
        return self.cfg != 1.0


@dataclass(frozen=True)
class SamplePlan:
    strategy: str                                   # "single" | "batch" | "cfg" | "sequence" | "cfg_sequence"
                                                    # | "patch" | "batch_patch" | "cfg_patch" | "shard" | ...
    workers: tuple[int, ...]                        # single: (w,); cfg: (cond, uncond); batch: one per part;
                                                    # sequence, patch: rank order (rank 0 = the main worker);
                                                    # cfg_sequence, cfg_patch: cond ranks, then uncond ranks;
                                                    # batch_patch: each group's ranks, group after group
    ranges: tuple[tuple[int, int], ...] = ()        # batch, batch_patch: rows [start, stop) per worker (the
                                                    # members of one batch_patch group share one range)
    reason: str = ""
    cost: float = field(default=0.0, compare=False)

    def as_dict(self) -> dict:
        return asdict(self)

    def batch_groups(self) -> list[tuple[tuple[int, int], tuple[int, ...]]]:
        """batch_patch: ((start, stop), the group's workers in rank order) per group, in batch order."""
        out: list[tuple[tuple[int, int], tuple[int, ...]]] = []
        for worker, rows in zip(self.workers, self.ranges):
            if out and out[-1][0] == rows:
                out[-1] = (rows, out[-1][1] + (worker,))
            else:
                out.append((rows, (worker,)))
        return out


def _fits(worker: WorkerInfo, workload: Workload) -> bool:
    return worker.memory_free is None or workload.model_bytes is None or worker.memory_free >= workload.model_bytes


def _single(workload: Workload, main: WorkerInfo, reason: str) -> SamplePlan:
    rows = workload.batch * (2 if workload.uses_uncond else 1)
    return SamplePlan("single", (main.worker_id,), reason=reason, cost=rows / main.speed)


def _batch(workload: Workload, workers: list[WorkerInfo]) -> SamplePlan | None:
    if workload.batch_coupled:          # split rows would choose other step sizes: another image
        return None
    usable = sorted(workers, key=lambda w: -w.speed)[: workload.batch]
    if len(usable) < 2:
        return None
    ranges = split_batch(workload.batch, [w.speed for w in usable])
    parts = [(w, r) for w, r in zip(usable, ranges) if r[1] > r[0]]
    per_row = 2 if workload.uses_uncond else 1
    cost = max((stop - start) * per_row / w.speed for w, (start, stop) in parts)
    return SamplePlan("batch", tuple(w.worker_id for w, _ in parts), tuple(r for _, r in parts),
                      reason=f"batch of {workload.batch} split by speed over {len(parts)} workers", cost=cost)


def _cfg(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo) -> SamplePlan | None:
    if not workload.uses_uncond or len(workers) < 2:
        return None
    others = sorted((w for w in workers if w.worker_id != main.worker_id), key=lambda w: -w.speed)
    pair = (main, others[0])
    cost = workload.batch / min(w.speed for w in pair) * (1 + CFG_EXCHANGE_OVERHEAD)
    return SamplePlan("cfg", (pair[0].worker_id, pair[1].worker_id),
                      reason=f"cond and uncond on two workers, cfg={workload.cfg}", cost=cost)


def _split_group(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo, count: int,
                 overhead: float) -> tuple[list[WorkerInfo], float]:
    """The main worker and the fastest others, `count` in all, sharing one image; the cost of its step
    (every row on the slowest member's share, plus `overhead` per extra worker for the exchanges)."""
    others = sorted((w for w in workers if w.worker_id != main.worker_id), key=lambda w: -w.speed)
    group = [main] + others[:count - 1]
    rows = workload.batch * (2 if workload.uses_uncond else 1)
    return group, rows / (count * min(w.speed for w in group)) * (1 + overhead * (count - 1))


def _sequence(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo,
              min_tokens: int = MIN_SEQUENCE_TOKENS) -> SamplePlan | None:
    """Every usable worker that gets at least `min_tokens` image tokens (1 when the mode is asked for)."""
    if workload.tokens == 0:
        return None
    count = min(len(workers), workload.tokens // min_tokens)
    if count < 2:
        return None
    group, cost = _split_group(workload, workers, main, count, SEQUENCE_OVERHEAD)
    return SamplePlan("sequence", tuple(w.worker_id for w in group),
                      reason=f"{workload.tokens} image tokens split over {count} workers", cost=cost)


def _cfg_halves(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo, half: int, overhead: float,
                strategy: str, what: str) -> SamplePlan | None:
    """CFG x an image split: cond on one half of the workers, uncond on the other, each half split
    (`half` workers each, `overhead` per extra worker of a half, plus the CFG exchange)."""
    if not workload.uses_uncond or half < 2:
        return None
    others = sorted((w for w in workers if w.worker_id != main.worker_id), key=lambda w: -w.speed)
    group = [main] + others[:2 * half - 1]
    cost = (workload.batch / (half * min(w.speed for w in group)) * (1 + overhead * (half - 1))
            * (1 + CFG_EXCHANGE_OVERHEAD))
    return SamplePlan(strategy, tuple(w.worker_id for w in group),
                      reason=f"cond and uncond on {half} workers each, {what}", cost=cost)


def _cfg_sequence(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo,
                  min_tokens: int = MIN_SEQUENCE_TOKENS) -> SamplePlan | None:
    """CFG x sequence: cond on one half of the workers, uncond on the other, each half sequence-split."""
    half = min(len(workers) // 2, workload.tokens // min_tokens)
    return _cfg_halves(workload, workers, main, half, SEQUENCE_OVERHEAD, "cfg_sequence",
                       f"{workload.tokens} image tokens split")


def _pooled(mode: str, workers: list[WorkerInfo], main: WorkerInfo) -> SamplePlan:
    """Sharded weights or layer split over every worker of the scope (the main one is rank 0)."""
    group = [main] + [w for w in workers if w.worker_id != main.worker_id]
    what = ("1/N of every block's weights on each worker, gathered per block" if mode == "shard"
            else "blocks divided among the workers in proportion to their free memory")
    return SamplePlan(mode, tuple(w.worker_id for w in group), reason=f"{mode}: {what}, {len(group)} workers")


def _bands(workload: Workload, asked: bool) -> int:
    """The most bands one image's latent rows split into: whole `patch_align` units, and in auto
    MIN_PATCH_ROWS rows or more per band (0: not a UNet, or rows not a multiple of the unit)."""
    if not workload.patch_rows or workload.patch_rows % workload.patch_align:
        return 0
    units = workload.patch_rows // workload.patch_align
    return units if asked else min(units, workload.patch_rows // MIN_PATCH_ROWS)


def _patch(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo, asked: bool) -> SamplePlan | None:
    """Bands of latent rows over as many workers as get a whole band (MIN_PATCH_ROWS rows in auto)."""
    count = min(len(workers), _bands(workload, asked))
    if count < 2:
        return None
    group, cost = _split_group(workload, workers, main, count, PATCH_OVERHEAD)
    return SamplePlan("patch", tuple(w.worker_id for w in group),
                      reason=f"{workload.patch_rows} latent rows split in bands over {count} workers", cost=cost)


def _cfg_patch(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo, asked: bool) -> SamplePlan | None:
    """CFG x patch: cond on one half of the workers, uncond on the other, each half patch-split."""
    half = min(len(workers) // 2, _bands(workload, asked))
    return _cfg_halves(workload, workers, main, half, PATCH_OVERHEAD, "cfg_patch",
                       f"each half's {workload.patch_rows} latent rows split in bands")


def _patch_speed(group: list[WorkerInfo]) -> float:
    """Rows per unit time of a group patch-splitting its rows (one worker: no split, no overhead)."""
    return len(group) * min(w.speed for w in group) / (1 + PATCH_OVERHEAD * (len(group) - 1))


def _batch_patch(workload: Workload, workers: list[WorkerInfo], main: WorkerInfo, asked: bool) -> SamplePlan | None:
    """Batch x patch: the batch rows split over groups of workers (in proportion to each group's
    predicted speed), each group's rows patch-split over its members (a lone member runs its rows
    whole). Workers in speed order (the main one first) are cut into 2 or more contiguous groups,
    larger groups first or last (fast workers alone, slow ones pooled); the cheapest cut wins."""
    bands = _bands(workload, asked)
    if workload.batch_coupled or workload.batch < 2 or bands < 2 or len(workers) < 3:
        return None
    ordered = [main] + sorted((w for w in workers if w.worker_id != main.worker_id), key=lambda w: -w.speed)
    per_row = 2 if workload.uses_uncond else 1
    best: SamplePlan | None = None
    for count in range(2, min(workload.batch, len(ordered) - 1) + 1):
        even = [min(bands, len(ordered) // count + (i < len(ordered) % count)) for i in range(count)]
        for sizes in (even, even[::-1]):
            groups = [ordered[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(count)]
            ranges = split_batch(workload.batch, [_patch_speed(g) for g in groups])
            parts = [(g, r) for g, r in zip(groups, ranges) if r[1] > r[0]]
            if len(parts) < 2 or all(len(g) == 1 for g, _ in parts):     # plain patch or plain batch split
                continue
            cost = max((stop - start) * per_row / _patch_speed(g) for g, (start, stop) in parts)
            if best is None or cost < best.cost:
                shape = " + ".join(str(len(g)) for g, _ in parts)
                best = SamplePlan("batch_patch", tuple(w.worker_id for g, _ in parts for w in g),
                                  tuple(r for g, r in parts for _ in g), cost=cost,
                                  reason=f"batch of {workload.batch} split over {len(parts)} groups of {shape} "
                                         f"workers, each group's {workload.patch_rows} latent rows in bands over "
                                         "its workers")
    return best


def _why_no_patch(workload: Workload) -> str:
    if not workload.patch_rows:
        return "patch parallel asked for, but the model is not an SD UNet"
    return (f"patch parallel asked for, but {workload.patch_rows} latent rows do not split into bands of "
            f"{workload.patch_align} rows over 2 or more workers")


def plan_sample(workload: Workload, workers: list[WorkerInfo], mode: str = "auto",
                main_worker: int | None = None) -> SamplePlan:
    """Pick single, batch or CFG parallel for one job over `workers` (the prompt's workers)."""
    if mode not in MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; expected one of {MODES}")
    usable = [w for w in workers if _fits(w, workload)] or list(workers)
    main = next((w for w in usable if w.worker_id == main_worker), None) or max(usable, key=lambda w: w.speed)
    single = _single(workload, main, "one worker")
    if mode in MEMORY_MODES and len(workers) >= 2:     # pooled memory: every worker, whether the model fits or not
        return _pooled(mode, workers, main)
    if len(usable) < 2 or mode in ("none", "queue"):
        return single if len(usable) < 2 else _single(workload, main, f"parallel mode {mode!r}")
    batch, cfg = _batch(workload, usable), _cfg(workload, usable, main)
    sequence = _sequence(workload, usable, main, 1 if mode == "sequence" else MIN_SEQUENCE_TOKENS)
    if mode == "sequence":
        why = ("sequence parallel asked for, but the model is not a diffusion transformer" if not workload.tokens
               else f"sequence parallel asked for, but {workload.tokens} image tokens are too few to split")
        hybrid = _cfg_sequence(workload, usable, main, 1)
        return min((p for p in (sequence, hybrid) if p is not None), key=lambda p: p.cost, default=None) \
            or _single(workload, main, why)
    asked = mode == "patch"
    patches = [p for p in (_patch(workload, usable, main, asked), _batch_patch(workload, usable, main, asked),
                           _cfg_patch(workload, usable, main, asked)) if p is not None]
    if mode == "patch":
        return min(patches, key=lambda p: p.cost, default=None) or _single(workload, main, _why_no_patch(workload))
    if mode == "batch":
        why = ("the sampler chooses its steps over the whole batch (dpm_adaptive), so a split would change the images"
               if workload.batch_coupled else "the batch has one sample")
        return batch or _single(workload, main, f"batch parallel asked for, but {why}")
    if mode == "cfg":
        return cfg or (batch or _single(workload, main, "CFG parallel asked for, but cfg is 1 (no uncond pass)"))
    hybrid = _cfg_sequence(workload, usable, main)
    # order = preference on ties
    candidates = [single] + [p for p in (batch, cfg, sequence, hybrid) if p is not None] + patches
    return min(candidates, key=lambda p: p.cost)

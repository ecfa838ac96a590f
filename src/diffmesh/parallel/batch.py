"""Batch parallel: rows of one job's batch on several workers, merged by concatenation.

Split: `split_batch(total, speeds)` gives each worker a contiguous range in proportion to its
measured speed; each worker runs `job.sliced(start, stop)`, which keeps the initial noise rows
and makes per-step noise come from the full batch, so every row equals a one-device run.
Merge: concatenate along the batch dimension in range order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def split_batch(total: int, speeds: list[float]) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges, one per worker, sized in proportion to `speeds`.

    Largest-remainder rounding; a worker whose share rounds to zero gets an empty range
    (callers skip those). `sum(stop - start) == total` always.
    """
    if total < 0 or not speeds or any(s <= 0 for s in speeds):
        raise ValueError(f"need total >= 0 and positive speeds, got total={total}, speeds={speeds}")
    weight = sum(speeds)
    exact = [total * s / weight for s in speeds]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(speeds)), key=lambda i: (exact[i] - counts[i], speeds[i]), reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    ranges, start = [], 0
    for count in counts:
        ranges.append((start, start + count))
        start += count
    return ranges


def split_job(job, workers: list[int], speeds: list[float]) -> list[tuple[int, Any]]:
    """(worker id, sliced job) for every worker that gets at least one row."""
    total = job.latent.shape[0]
    return [(worker, job.sliced(start, stop))
            for worker, (start, stop) in zip(workers, split_batch(total, speeds)) if stop > start]


def merge_batch(parts: list[torch.Tensor]) -> torch.Tensor:
    import torch            # here, not at import: the planner (and so the CLI's flags) must not pull in torch

    return torch.cat(parts, dim=0)     # (B,C,H,W) from (b_i,C,H,W) in range order

"""Stages of a layer split: which worker runs which blocks, balanced by measured block times.

A layer-split pipeline (`parallel.pipeline`) is a chain: every micro-batch passes through worker 0's
blocks, then worker 1's, and so on, once each when every worker owns one contiguous range of blocks
in the order the forward runs them. With M micro-batches and stage times s_r (one micro-batch
through worker r's blocks), a call takes about sum(s) + (M - 1) max(s): the slowest stage sets the
pace once the pipeline is full. Splitting by bytes (the first layout, before anything ran) can be
far from that: a UNet's high-resolution blocks hold few weights and most of the work, and module
order is not run order (diffusers registers `mid_block` after `up_blocks`), so the first split may
even send every micro-batch back and forth between two workers twice.

`balanced_owners` cuts the run order into contiguous ranges, one per worker in rank order, so that
the slowest stage is as fast as it can be while each worker's range fits its room for blocks
(exact dynamic programme: a few dozen blocks, a handful of workers). `pipeline_seconds` predicts
a call of either layout by playing the pipeline's schedule through with the measured block times,
so a new layout is taken only when it is predicted faster.
"""

from __future__ import annotations

import math


def chain(order: list[int], times: list[float], owners: list[int]) -> list[tuple[int, float]]:
    """(worker, seconds) of each stage one micro-batch passes through: consecutive blocks of the run
    order on one worker make one stage; a worker visited twice (owners not contiguous in the run
    order, as the first split of a UNet) has two stages."""
    stages: list[tuple[int, float]] = []
    for index in order:
        owner = owners[index]
        if stages and stages[-1][0] == owner:
            stages[-1] = (owner, stages[-1][1] + times[index])
        else:
            stages.append((owner, times[index]))
    return stages


def pipeline_seconds(stages: list[tuple[int, float]], micro_batches: int) -> float:
    """Seconds of one call of `micro_batches` through `stages`, scheduled as `parallel.pipeline` does:
    a worker runs one stage at a time, to its end, and when free takes the lowest micro-batch ready
    for it (event by event, earliest start first). Contiguous stages give sum(s) + (M - 1) max(s);
    a revisited worker can cost far more, which the simple formula would miss."""
    count = max(1, micro_batches)
    ready = [0.0] * count                      # when each micro-batch's next stage may start
    step = [0] * count                         # each micro-batch's next stage
    free: dict[int, float] = {}
    for _ in range(count * len(stages)):
        start, m = min((max(ready[m], free.get(stages[step[m]][0], 0.0)), m)
                       for m in range(count) if step[m] < len(stages))
        worker, seconds = stages[step[m]]
        ready[m] = free[worker] = start + seconds
        step[m] += 1
    return max(ready)


def balanced_owners(order: list[int], times: list[float], sizes: list[int], capacities: list[float]) -> list[int] | None:
    """Owner rank of each block: worker r runs the r-th contiguous range of `order` (blocks by run
    order; a range may be empty), each range's bytes at most `capacities[r]`, and the largest range
    time as small as possible (ties: the earlier cut). None when no such cut fits the capacities."""
    world, count = len(capacities), len(order)
    time_prefix, size_prefix = [0.0], [0]
    for index in order:
        time_prefix.append(time_prefix[-1] + times[index])
        size_prefix.append(size_prefix[-1] + sizes[index])
    # best[k][i]: the smallest slowest-stage time placing the first i blocks of the order on ranks < k
    best = [[math.inf] * (count + 1) for _ in range(world + 1)]
    cut = [[0] * (count + 1) for _ in range(world + 1)]
    best[0][0] = 0.0
    for k in range(1, world + 1):
        room = capacities[k - 1]
        for i in range(count + 1):
            for j in range(i + 1):
                if best[k - 1][j] == math.inf or size_prefix[i] - size_prefix[j] > room:
                    continue
                slowest = max(best[k - 1][j], time_prefix[i] - time_prefix[j])
                if slowest < best[k][i]:
                    best[k][i], cut[k][i] = slowest, j
    if best[world][count] == math.inf:
        return None
    owners = [0] * len(sizes)
    end = count
    for k in range(world, 0, -1):
        start = cut[k][end]
        for position in range(start, end):
            owners[order[position]] = k - 1
        end = start
    return owners

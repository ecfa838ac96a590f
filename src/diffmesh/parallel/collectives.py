"""Small collectives that several strategies' shards share."""

from __future__ import annotations

import torch


def agree_stop(group, stop: bool, on_device: bool) -> bool:
    """True on every member when any asked to stop: one small MAX all-reduce, so a group's workers
    leave at the same step and none waits alone in the next exchange."""
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop else 0.0])
    if on_device:
        flag = flag.to(torch.device("cuda", torch.cuda.current_device()))
    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.MAX
    group.allreduce([flag], opts).wait()
    return bool(flag.item())

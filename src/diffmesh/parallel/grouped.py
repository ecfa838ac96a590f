"""One model shared by a group of workers (sharded weights, layer split): the worker side.

`run_grouped` runs `fn(component)` on a member: the memory manager places this member's part
(`parallel.shard.ShardedWeights` or `parallel.layersplit.LayerSplit`) under a key of its own
(`GroupedHandle`), so the part is accounted, evicted and rebuilt like any model. Out of memory:
placement reserves everything the member will hold before any exchange; the manager's recovery
(free idle models, retry once) runs on the member that failed; then all members agree, in one
all-reduce before the first step, whether every part is placed. If one is not, every member
raises `DeviceOutOfMemory` (none is left waiting in a collective), naming the flags to change.
An out-of-memory error after that point (activations on a real device) also becomes a
`DeviceOutOfMemory` without a retry: the partners are inside the same forward and cannot redo it.
A layer-split member's model runs calls of 2+ rows as micro-batches (`parallel.pipeline`); the
engine sends the `DIFFMESH_MICRO_BATCHES` override in the layout, so every member cuts the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from diffmesh.errors import DeviceOutOfMemory

KINDS = ("shard", "layersplit")
ADVICE = ("raise --vram-budget, use more workers (--workers N), or run on one device with streaming "
          "(--parallel none --lowvram)")


@dataclass(frozen=True)
class GroupedHandle:
    """The memory manager's key for a member's part of `handle` (reads through to the handle)."""

    handle: Any
    kind: str
    group: str
    rank: int
    world: int
    # not part of the key: the engine's shares (free memory) change once a part is placed, and the
    # placed part stays good; members agree on their owners at each job (`LayerSplit.agree_layout`)
    shares: tuple = field(default=(), compare=False)

    def __getattr__(self, name: str) -> Any:
        if name == "handle":                   # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.handle, name)

    def __str__(self) -> str:
        return f"{self.handle} ({self.kind} {self.rank + 1}/{self.world})"


def layout_factory(layout: dict, group: Any, on_device: bool,
                   free: Callable[[], float] | None = None) -> Callable[[Any], Any]:
    kind, rank, world = layout["kind"], layout["rank"], layout["world"]
    if kind == "shard":
        from diffmesh.parallel.shard import ShardedWeights

        return lambda placement: ShardedWeights(placement, group, rank, world, layout.get("prefetch", True),
                                                on_device)
    if kind == "layersplit":
        from diffmesh.parallel.layersplit import LayerSplit

        shares = layout.get("shares") or [1.0] * world
        return lambda placement: LayerSplit(placement, group, rank, world, shares, on_device, free)
    raise ValueError(f"unknown layout kind {kind!r}; expected one of {KINDS}")


def agree_placed(group: Any, ok: bool, on_device: bool = False) -> bool:
    """True on every member when every member placed its part (one all-reduce)."""
    import torch.distributed as dist

    flag = torch.tensor([0.0 if ok else 1.0])
    if on_device:
        flag = flag.to(torch.device("cuda", torch.cuda.current_device()))
    opts = dist.AllreduceOptions()
    opts.reduceOp = dist.ReduceOp.MAX
    group.allreduce([flag], opts).wait()
    return not bool(flag.item())


def run_grouped(memory: Any, handle: Any, build: Callable, fn: Callable[[Any], Any], layout: dict,
                group_entry: tuple[Any, str]) -> Any:
    group, backend = group_entry
    on_device = backend == "nccl"
    key = GroupedHandle(handle, layout["kind"], layout["group"], layout["rank"], layout["world"],
                        tuple(layout.get("shares") or ()))
    agreed = [False]
    where = f"{memory.device} ({layout['kind']} member {layout['rank'] + 1} of {layout['world']})"

    def body(component: Any) -> Any:
        agreed[0] = True
        if not agree_placed(group, True, on_device):
            raise DeviceOutOfMemory(f"another member of the {layout['kind']} group could not place its part of "
                                    f"{key}", where=where, fix=ADVICE)
        try:
            return fn(_pipelined(memory, key, component, layout))
        except torch.OutOfMemoryError as exc:
            raise DeviceOutOfMemory(f"out of memory during a {layout['kind']} step: {exc}", where=where,
                                    fix=ADVICE) from exc

    try:
        free = None if memory.budget is None else memory.free_bytes
        return memory.run(key, build, body, layout=layout_factory(layout, group, on_device, free))
    except BaseException:
        if not agreed[0]:                      # the partners wait in agree_placed: tell them
            agree_placed(group, False, on_device)
        raise


def _pipelined(memory: Any, key: GroupedHandle, component: Any, layout: dict) -> Any:
    """A layer-split member's model with calls of 2+ rows run as micro-batches (`parallel.pipeline`),
    its owners agreed with the other members first (one collective)."""
    split = memory.layout_of(key) if layout["kind"] == "layersplit" else None
    if split is None or not hasattr(split, "pipelined"):
        return component
    split.reserve = int(layout.get("reserve") or 0)
    split.agree_layout()
    from diffmesh.parallel.pipeline import PipelineModel

    return PipelineModel(component, split, layout.get("micro_batches"))


# ------------------------------------------------------------------ engine side

def member_calls(scope: Any, model: Any, job: Any, plan: Any) -> list[tuple[int, dict]]:
    """(worker, sample() keyword arguments) for each member of a shard / layer-split plan.

    Sharded weights on a diffusion transformer also split the image tokens (a sequence group over
    the same workers), so every member computes; a UNet member runs the whole job itself."""
    from diffmesh.engine.engine import image_tokens
    from diffmesh.parallel import sequence as sequence_parallel

    root, workers = scope.root, tuple(plan.workers)
    weights = root.weight_groups.group(workers)
    shares: list[float] = []
    extra: dict[str, Any] = {}
    if plan.strategy == "layersplit":
        from diffmesh.parallel.pipeline import requested_micro_batches

        free = [root.executor.call(w, "memory_free").result() for w in workers]
        shares = [1.0] * len(workers) if any(f is None for f in free) else [max(float(f), 1.0) for f in free]
        extra["micro_batches"] = requested_micro_batches()   # the same on every member: None = one per row
        extra["reserve"] = _activation_reserve(scope, model, job, workers)
    calls = []
    for rank, worker in enumerate(workers):
        calls.append((worker, {"layout": {"kind": plan.strategy, "group": weights.group, "rank": rank,
                                          "world": len(workers), "shares": shares, **extra}}))
    if plan.strategy == "shard" and image_tokens(model, job) >= len(workers):
        seq_group = root.sequence_groups.group(workers)
        for (worker, kwargs), (_, _, seq) in zip(calls, sequence_parallel.split_sequence(
                job, seq_group, root.sequence_attention)):
            kwargs["sequence"] = seq
    return calls


def _activation_reserve(scope: Any, model: Any, job: Any, workers: tuple) -> int:
    """Bytes a layer-split member keeps free for the job's activations when balancing moves blocks
    (the cost model's estimate, measured per family: `engine.activations`); 0 when unknown."""
    from diffmesh.engine.explain import DEFAULT_FACTS, job_facts

    device = next((w.device for w in scope.workers if w.worker_id == workers[0]), "cpu")
    try:
        return int(job_facts(model, job, DEFAULT_FACTS["cuda" if device.startswith("cuda") else "cpu"]["bytes_per"])
                   .activation_bytes)
    except Exception:  # noqa: BLE001 - no readable header: balance within the budget alone
        return 0


def sample_pooled(scope: Any, handle: Any, job: Any, plan: Any, progress: Any = None) -> torch.Tensor:
    """Run a shard / layer-split plan: every member runs the job; rank 0's latent is the result.
    A failure drops the groups (a restarted or confused member must rejoin fresh) and is raised."""
    from diffmesh.engine.engine import _wait_all

    calls = member_calls(scope, handle, job, plan)
    futures = [scope.root.executor.call(w, "sample", handle, job, **kwargs,
                                        on_event=scope._tagged(progress, w, plan.strategy) if i == 0 else None)
               for i, (w, kwargs) in enumerate(calls)]
    outcomes = _wait_all(futures)
    errors = [e for _, e in outcomes if e is not None]
    if errors:
        scope.root.weight_groups.drop(scope.root.weight_groups.group(tuple(plan.workers)))
        if any("sequence" in kwargs for _, kwargs in calls):
            scope.root.sequence_groups.drop(scope.root.sequence_groups.group(tuple(plan.workers)))
        # the member that failed first is the cause; its partners then time out waiting for it
        cause = [e for e in errors if isinstance(e, DeviceOutOfMemory)] + \
                [e for e in errors if "Timed out" not in str(e)] + errors
        raise cause[0]
    return outcomes[0][0]

"""Layer split: a model's blocks divided among the workers of a group, activations passed on.

Layout: the blocks (as streaming finds them, `devices.offload.find_blocks`, but at most 1/8 of the
model each: fewer, larger blocks mean fewer broadcasts) are first cut into contiguous ranges in module
order, one range per worker, in proportion to the room each worker reports (`shares`: its free
budget; `assign_blocks`: a block goes to the range its middle byte falls in). That split knows
nothing of time, and module order need not be run order, so after each pipelined call the members
gather the block times their owners measured and the run order, and move blocks to the contiguous
ranges of the run order that `parallel.stages` predicts fastest within each worker's room (the blocks
it holds + its budget left - the job's activation estimate, sent by the engine as `reserve`), when
that is at least `MIN_GAIN` faster. At each job the members first agree on the owners
(`agree_layout`): a member whose part was evicted and placed again takes rank 0's. A worker holds
its own range of blocks and everything outside the blocks (embeddings, buffers, small layers: needed
by every worker, because each member runs the model's forward code); the slots of the other workers'
blocks hold one-element placeholders (meta tensors while such a block runs): no memory.

Run, one batch (exact, single stream): every member runs the same forward. A block this worker owns
computes and its output is broadcast from it to the other members; on the others the block's inputs
are turned into meta tensors by a forward pre-hook (so the block's own code runs without data and
yields the output's shapes and dtypes), and the forward hook replaces that meta output with the
tensors received from the owner. All members end with the same activations, so skip connections (a
UNet's) and non-block code need nothing special, and the result is one device's numbers exactly
(each block runs once, on one worker, on the same inputs). Compute is serial: while one worker runs
its range the others wait.

Run, 2+ rows (batch > 1 or cfg != 1; `parallel.pipeline`): the call is cut into micro-batches, each
run as above in a thread of its own on every member, one computing at a time per worker; a block's
output goes point to point from the owner to each other member (gloo send/recv, tagged by call,
micro-batch and position, since several are in flight), and a thread waiting for one gives its
worker to the next micro-batch. So worker r runs micro-batch m while worker r-1 runs m+1: every
worker busy once the pipeline is full. On an NCCL group (which matches point-to-point messages by
order, not tag) the forward stays serial. `stats()["pipeline"]` says what ran: serial and pipelined
calls, the last call's micro-batches, and its owned blocks' start/end times (`time.monotonic`, one
clock for every process of a host).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from diffmesh.devices import hooks
from diffmesh.devices.offload import Block, Placement
from diffmesh.errors import DeviceOutOfMemory
from diffmesh.parallel.grouped import ADVICE, agree_placed
from diffmesh.parallel.pipeline import MicroBatchRun
from diffmesh.parallel.shard import kept_names
from diffmesh.parallel.stages import balanced_owners, chain, pipeline_seconds

SPLIT_HOOK = "layersplit"
MIN_GAIN = 0.05          # a balanced layout is taken when predicted at least 5% faster (times are noisy)


def assign_blocks(sizes: list[int], shares: list[float]) -> list[int]:
    """Owner rank of each block: contiguous ranges in order, bytes in proportion to `shares` (a block
    goes to the range its middle byte falls in)."""
    world, total = len(shares), float(sum(sizes)) or 1.0
    bounds, acc = [], 0.0
    weight = float(sum(shares)) or 1.0
    for share in shares:
        acc += share / weight
        bounds.append(acc)
    owners, done = [], 0.0
    for size in sizes:
        middle = (done + size / 2.0) / total
        owners.append(next((r for r, b in enumerate(bounds) if middle <= b), world - 1))
        done += size
    return owners


def _to_meta(value: Any) -> Any:
    return pytree.tree_map(lambda v: torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v,
                           value)


class LayerSplit:
    """The layout of one component on one member of a layer-split group (see the module docstring)."""

    def __init__(self, placement: Placement, group: Any, rank: int, world: int, shares: list[float],
                 on_device: bool = False, free: Callable[[], float] | None = None):
        if len(shares) != world:
            raise ValueError(f"layer split needs one share per worker: {len(shares)} shares for {world} workers")
        self.placement, self.group, self.rank, self.world = placement, group, rank, world
        self.shares, self.on_device = list(shares), on_device
        self.blocks: list[Block] = []
        self.owners: list[int] = []
        self.held = 0
        self.sent = 0
        self.received = 0
        self.run: MicroBatchRun | None = None     # the pipelined call in progress, else None (serial)
        self.pipelined_calls = 0
        self.serial_calls = 0
        self.last_call: dict[str, Any] = {}
        self._sends: dict[int, list[tuple[Any, torch.Tensor]]] = {}   # micro-batch -> sends in flight
        self._trace: list[list[float]] = []
        self.free = free                          # room left under this worker's budget (None: no budget)
        self.reserve = 0                          # bytes a move leaves free for activations (set per job)
        self.kept: list[str] = []
        self.order: list[int] = []                # block indices in the order the last pipelined call ran them
        self._seen: dict[int, None] = {}
        self.balance: dict[str, Any] = {"moves": 0}

    def place(self) -> None:
        p = self.placement
        p.offload_all()
        self.blocks = p.blocks(max(1, p.total_bytes // 8))
        self.owners = assign_blocks([b.nbytes for b in self.blocks], self.shares)
        self.kept = kept_names(p, self.blocks)
        mine = self.kept + self._names_of(self.owners)
        self.held = sum(p.entries[n].nbytes for n in mine)
        p.account(self.held)                     # may raise: nothing placed yet
        self._take(mine)
        self._attach()

    def _names_of(self, owners: list[int]) -> list[str]:
        return [n for b, r in zip(self.blocks, owners) if r == self.rank for n in b.names]

    def _take(self, names: list[str]) -> None:
        p = self.placement
        for name in names:
            p._set(name, p._copy_in(name))
            p.live.add(name)

    def _attach(self) -> None:
        for index, (block, owner) in enumerate(zip(self.blocks, self.owners)):
            if owner != self.rank:                 # placeholders stay in the slots between forwards
                hooks.attach(block.module, SPLIT_HOOK, self._meta_run(index, block), self._receive(block, owner),
                             outer=True, with_kwargs=True)
            else:
                hooks.attach(block.module, SPLIT_HOOK, self._started(index), self._send_hook(index), outer=True)

    # -- hooks -----------------------------------------------------------------------------------
    def _meta_run(self, index: int, block: Block):
        """Pre-hook of another worker's block: meta weights and inputs, so its code runs without data
        (the placeholders' one element would be read as real weights). The component's `device`
        keeps reading a placeholder between forwards."""
        def pre(module, args, kwargs):
            self._ran(index)
            for name in block.names:
                like = self.placement.entries[name].placeholder
                self.placement._set(name, torch.empty(like.shape, dtype=like.dtype, device="meta"))
            return _to_meta(args), _to_meta(kwargs)
        return pre

    def _ran(self, index: int) -> None:
        """Note the run order (micro-batch 0 of a pipelined call: every member sees the same order)."""
        if self.run is not None and self.run.micro_batch == 0 and index not in self._seen:
            self._seen[index] = None

    def _broadcast(self, tensor: torch.Tensor, root: int) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = root, 0
        self.group.broadcast([tensor], opts).wait()

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().contiguous() if self.on_device else tensor.detach().to("cpu").contiguous()

    def _started(self, index: int):
        def pre(module, args):
            self._ran(index)
            if self.run is not None:
                self._trace.append([self.run.micro_batch, index, time.monotonic(), 0.0])
        return pre

    def _send_hook(self, index: int):
        def post(module, args, output):
            if self.run is None:
                return self._send(module, args, output)
            self._send_each(self.run, output)
            self._trace[-1][3] = time.monotonic()   # one thread computes at a time: the last entry is this block's
            return output
        return post

    def _send(self, module, args, output):
        for leaf in pytree.tree_leaves(output):
            if isinstance(leaf, torch.Tensor):
                self._broadcast(self._wire(leaf), self.rank)
                self.sent += leaf.numel() * leaf.element_size()
        return output

    def _receive(self, block: Block, owner: int):
        device = self.placement.device
        where = device if self.on_device else torch.device("cpu")

        def receive(module, args, output):
            for name in block.names:
                self.placement._set(name, self.placement.entries[name].placeholder)
            if self.run is not None:
                return self._receive_each(self.run, output, owner, where)
            leaves, spec = pytree.tree_flatten(output)
            real = []
            for leaf in leaves:
                if isinstance(leaf, torch.Tensor):
                    buffer = torch.empty(leaf.shape, dtype=leaf.dtype, device=where)
                    self._broadcast(buffer, owner)
                    self.received += buffer.numel() * buffer.element_size()
                    leaf = buffer.to(device)
                real.append(leaf)
            return pytree.tree_unflatten(real, spec)
        return receive

    # -- the micro-batch pipeline (parallel.pipeline) ------------------------------------------------
    def pipeline_off_reason(self) -> str | None:
        return "an NCCL group matches messages by order, not tag" if self.on_device else None

    def note_serial(self, rows: int, reason: str) -> None:
        self.serial_calls += 1
        self.last_call = {"rows": rows, "micro_batches": 1, "serial_because": reason}

    def pipelined(self, count: int, rows: int, fn: Callable[[int], Any]) -> list[Any]:
        """[fn(0), ..., fn(count - 1)]: micro-batch forwards, interleaved by the pipeline."""
        self.run = MicroBatchRun(count, self.pipelined_calls, self.placement.device)
        self.pipelined_calls += 1
        self._trace = []
        self._seen = {}
        self._sends = {m: [] for m in range(count)}

        def sent(m: int) -> None:                  # a finished micro-batch's messages: buffers free once received
            for work, _ in self._sends[m]:
                work.wait()
            self._sends[m] = []
        try:
            outputs = self.run.run(fn, sent)
        finally:
            self.run = None
            self._sends = {}
        self.last_call = {"rows": rows, "micro_batches": count, "trace": self._trace}
        self.order = list(self._seen) + [i for i in range(len(self.blocks)) if i not in self._seen]
        self._rebalance(count)
        return outputs

    def _send_each(self, run: MicroBatchRun, output: Any) -> None:
        """Each tensor of an owned block's output to every other member, tagged (no wait: the sends
        complete while this worker computes on)."""
        for leaf in pytree.tree_leaves(output):
            if not isinstance(leaf, torch.Tensor):
                continue
            wire = self._wire(leaf)
            if wire.data_ptr() == leaf.data_ptr():  # the model may change its output in place before it is sent
                wire = wire.clone()
            tag = run.next_tag()
            for peer in range(self.world):
                if peer != self.rank:
                    self._sends[run.micro_batch].append((self.group.send([wire], peer, tag), wire))
            self.sent += wire.numel() * wire.element_size()

    def _receive_each(self, run: MicroBatchRun, output: Any, owner: int, where: torch.device) -> Any:
        leaves, spec = pytree.tree_flatten(output)
        real, works = [], []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                buffer = torch.empty(leaf.shape, dtype=leaf.dtype, device=where)
                works.append(self.group.recv([buffer], owner, run.next_tag()))
                self.received += buffer.numel() * buffer.element_size()
                leaf = buffer
            real.append(leaf)
        with run.waiting():                        # another micro-batch computes meanwhile
            for work in works:
                work.wait()
        device = self.placement.device
        return pytree.tree_unflatten([v.to(device) if isinstance(v, torch.Tensor) else v for v in real], spec)

    # -- balancing the stages (parallel.stages) ------------------------------------------------------
    def _rebalance(self, count: int) -> None:
        """After a pipelined call, on every member at once: gather the block times each owner measured,
        the run order and each worker's room for blocks; move to the layout `balanced_owners` finds
        when it is predicted at least MIN_GAIN faster. Times are taken as their current owner measured
        them (workers of one kind); room = the blocks held + the budget left - the job's activations."""
        n, world = len(self.blocks), self.world
        facts = torch.zeros(2 * n + world, dtype=torch.float64)
        for micro_batch, index, start, end in self._trace:
            facts[int(index)] += (end - start) / count
        if self.rank == 0:
            facts[n:2 * n] = torch.tensor(self.order, dtype=torch.float64)
        sizes = [b.nbytes for b in self.blocks]
        holding = [sum(s for s, r in zip(sizes, self.owners) if r == k) for k in range(world)]
        room = float("inf") if self.free is None else holding[self.rank] + float(self.free()) - self.reserve
        facts[2 * n + self.rank] = min(room, 1e300)
        self._all_reduce(facts, "SUM")             # each entry comes from one member: the sum is exact
        times = facts[:n].tolist()
        order = [int(v) for v in facts[n:2 * n].tolist()]
        rooms = [max(float(c), h) for c, h in zip(facts[2 * n:].tolist(), holding)]   # never worse than now
        stages = chain(order, times, self.owners)
        now = pipeline_seconds(stages, count)
        found = balanced_owners(order, times, sizes, rooms)
        self.balance.update({"order": order, "block_s": [round(t, 4) for t in times],
                             "stages": stages, "predicted_call_s": now,
                             "room_bytes": rooms, "holding_bytes": holding})
        if found is None or found == self.owners:
            return
        after = chain(order, times, found)
        then = pipeline_seconds(after, count)
        if then > now * (1.0 - MIN_GAIN):
            return
        moved = sum(s for s, old, new in zip(sizes, self.owners, found) if old != new)
        self._move(found)
        self.balance.update({"moves": self.balance["moves"] + 1, "moved_bytes": moved, "before_call_s": now,
                             "after_call_s": then, "stages_after": after})

    def agree_layout(self) -> None:
        """At the start of a job, on every member: the same owners and the same count of pipelined calls
        (it names the messages) everywhere. A member that re-placed (its part was evicted while the
        others kept theirs) takes rank 0's owners and the others' count."""
        if self.world < 2:
            return
        where = self.placement.device if self.on_device else torch.device("cpu")   # NCCL: device tensors
        owners = torch.tensor(self.owners, dtype=torch.float64, device=where)
        spread = torch.cat([owners, -owners, torch.tensor([float(self.pipelined_calls)], dtype=torch.float64,
                                                          device=where)])
        self._all_reduce(spread, "MAX")
        self.pipelined_calls = int(spread[-1].item())
        if torch.equal(spread[:len(owners)], -spread[len(owners):-1]):
            return
        self._broadcast(owners, 0)
        self._move([int(v) for v in owners.tolist()])

    def _move(self, owners: list[int]) -> None:
        """Hold the blocks `owners` gives this worker (every member calls this at once): drop the blocks
        leaving, reserve and copy in the blocks arriving; if any member cannot reserve, all raise."""
        p = self.placement
        leaving = [n for b, old, new in zip(self.blocks, self.owners, owners)
                   if old == self.rank and new != self.rank for n in b.names]
        arriving = [n for b, old, new in zip(self.blocks, self.owners, owners)
                    if old != self.rank and new == self.rank for n in b.names]
        for block in self.blocks:
            hooks.detach(block.module, SPLIT_HOOK)
        for name in leaving:
            p._to_host(name)                       # the store keeps every weight: this drops and unaccounts
        need = sum(p.entries[n].nbytes for n in arriving)
        failure = None
        try:
            p.account(need)
        except torch.OutOfMemoryError as exc:
            failure = exc
        if not agree_placed(self.group, failure is None, self.on_device):
            if failure is None:
                p.account(-need)
            self.release()                         # unusable now: the engine drops the group on this error
            raise DeviceOutOfMemory(f"moving layer-split blocks between workers failed: {failure or 'on a partner'}",
                                    where=str(p.device), fix=ADVICE)
        self._take(arriving)
        self.owners = list(owners)
        self.held = sum(p.entries[n].nbytes for n in self.kept + self._names_of(self.owners))
        self._attach()

    def _all_reduce(self, tensor: torch.Tensor, op: str) -> None:
        import torch.distributed as dist

        opts = dist.AllreduceOptions()
        opts.reduceOp = getattr(dist.ReduceOp, op)
        self.group.allreduce([tensor], opts).wait()

    # -- end of a call, and unloading -------------------------------------------------------------
    def release_transient(self) -> None:
        return None                              # nothing outlives a block's forward

    def release(self) -> None:
        for block in self.blocks:
            hooks.detach(block.module, SPLIT_HOOK)
        self.placement.offload_all()             # accounts the held bytes back, placeholders everywhere
        self.held = 0

    def stats(self) -> dict[str, Any]:
        counts = [self.owners.count(r) for r in range(self.world)]
        return {"kind": "layersplit", "rank": self.rank, "world": self.world, "blocks_per_rank": counts,
                "held_bytes": self.held, "peak_live_bytes": self.held, "model_bytes": self.placement.total_bytes,
                "activation_bytes_sent": self.sent, "activation_bytes_received": self.received,
                "pipeline": {"pipelined_calls": self.pipelined_calls, "serial_calls": self.serial_calls,
                             "last_call": self.last_call, "balance": self.balance}}

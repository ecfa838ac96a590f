"""Layer split: a model's blocks divided among the workers of a group, activations passed on.

Layout: the blocks (as streaming finds them, `devices.offload.find_blocks`, but at most 1/8 of the
model each: fewer, larger blocks mean fewer broadcasts) are cut into contiguous ranges in module
order, one range per worker, in proportion to the room each worker reports (`shares`: its free
budget; `assign_blocks`: a block goes to the range its middle byte falls in). A worker holds
its own range of blocks and everything outside the blocks (embeddings, buffers, small layers: needed
by every worker, because each member runs the model's forward code); the slots of the other workers'
blocks hold one-element placeholders (meta tensors while such a block runs): no memory.

Run (exact, single stream): every member runs the same forward. A block this worker owns computes
and its output is broadcast from it to the other members; on the others the block's inputs are
turned into meta tensors by a forward pre-hook (so the block's own code runs without data and yields
the output's shapes and dtypes), and the forward hook replaces that meta output with the tensors
received from the owner. All members end with the same activations, so skip connections (a UNet's)
and non-block code need nothing special, and the result is one device's numbers exactly (each block
runs once, on one worker, on the same inputs). Compute is serial: while one worker runs its range
the others wait; pooled memory, not speed, is the point. The micro-batch pipeline (several prompts
in flight keeping every worker busy) is not built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from diffmesh.devices import hooks
from diffmesh.devices.offload import Block, Placement
from diffmesh.parallel.shard import kept_names

SPLIT_HOOK = "layersplit"


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
                 on_device: bool = False):
        if len(shares) != world:
            raise ValueError(f"layer split needs one share per worker: {len(shares)} shares for {world} workers")
        self.placement, self.group, self.rank, self.world = placement, group, rank, world
        self.shares, self.on_device = list(shares), on_device
        self.blocks: list[Block] = []
        self.owners: list[int] = []
        self.held = 0
        self.sent = 0
        self.received = 0

    def place(self) -> None:
        p = self.placement
        p.offload_all()
        self.blocks = p.blocks(max(1, p.total_bytes // 8))
        self.owners = assign_blocks([b.nbytes for b in self.blocks], self.shares)
        mine = kept_names(p, self.blocks) + [n for b, r in zip(self.blocks, self.owners) if r == self.rank
                                             for n in b.names]
        self.held = sum(p.entries[n].nbytes for n in mine)
        p.account(self.held)                     # may raise: nothing placed yet
        for name in mine:
            p._set(name, p._copy_in(name))
            p.live.add(name)
        for block, owner in zip(self.blocks, self.owners):
            if owner != self.rank:                 # placeholders stay in the slots between forwards
                hooks.attach(block.module, SPLIT_HOOK, self._meta_run(block), self._receive(block, owner),
                             outer=True, with_kwargs=True)
            else:
                hooks.attach(block.module, SPLIT_HOOK, None, self._send, outer=True)

    # -- hooks -----------------------------------------------------------------------------------
    def _meta_run(self, block: Block):
        """Pre-hook of another worker's block: meta weights and inputs, so its code runs without data
        (the placeholders' one element would be read as real weights). The component's `device`
        keeps reading a placeholder between forwards."""
        def pre(module, args, kwargs):
            for name in block.names:
                like = self.placement.entries[name].placeholder
                self.placement._set(name, torch.empty(like.shape, dtype=like.dtype, device="meta"))
            return _to_meta(args), _to_meta(kwargs)
        return pre

    def _broadcast(self, tensor: torch.Tensor, root: int) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = root, 0
        self.group.broadcast([tensor], opts).wait()

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().contiguous() if self.on_device else tensor.detach().to("cpu").contiguous()

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
                "activation_bytes_sent": self.sent, "activation_bytes_received": self.received}

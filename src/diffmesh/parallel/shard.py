"""Sharded weights (FSDP-style inference): each worker of a group holds 1/N of every block.

Layout: the model is built in host memory; its blocks are found as streaming finds them
(`devices.offload.find_blocks`, at most 1/16 of the model each). Each block's tensors are laid end
to end as bytes (every tensor at a 64-byte offset, so any dtype mix, fp8 included, travels as one
uint8 vector), padded to a multiple of N, and worker r keeps only bytes [r*L/N, (r+1)*L/N) on its
device. Everything outside the blocks (embeddings, buffers, small layers) stays whole on every
worker.

Run: a forward pre-hook on each block all-gathers the block's bytes into one buffer and points
the block's parameters at views of it; the forward hook points them back at the placeholders and
the buffer is freed. Prefetch: when the block that ran after this one last time is known (from
the second forward on; every member sees the same call order), its all-gather is started
asynchronously before this block computes: gloo runs it on its own thread while this process
computes, so on CPU workers it overlaps the matrix products. At most two gathered blocks exist
at once (the current and the prefetched one).

Memory: `place()` accounts the whole-kept tensors, this worker's shards and a workspace of two
gathered blocks (the largest) with the device's memory manager before any exchange, so a budget
that is too small fails at placement (the group then agrees to fail: `worker.Worker`), never in
the middle of a collective. `stats()` reports the bytes of tensors actually alive (shards + kept +
gathered buffers) and their peak, beside the accounted reservation. The host store keeps the
whole weights (host memory is what streaming draws from too); the device holds S/N + two blocks.

What every worker computes: with a diffusion transformer the shard group is also a sequence
group (`parallel.sequence`), so each member computes 1/N of the image tokens. A UNet has no such
split here: every member runs the same whole job (redundant compute), only the weights are pooled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffmesh.devices import hooks
from diffmesh.devices.offload import Block, Placement

SHARD_HOOK = "shard"
ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class _Flat:
    """One block's tensors as bytes: name -> (offset, nbytes); `length` padded to a multiple of N."""
    block: Block
    offsets: dict[str, tuple[int, int]]
    length: int


def flat_layout(placement: Placement, block: Block, world: int) -> _Flat:
    offsets, at = {}, 0
    for name in block.names:
        nbytes = placement.entries[name].nbytes
        offsets[name] = (at, nbytes)
        at = _aligned(at + nbytes)
    length = -(-max(at, 1) // (world * ALIGN)) * world * ALIGN
    return _Flat(block, offsets, length)


def kept_names(placement: Placement, blocks: list[Block]) -> list[str]:
    """Tensors outside every block (buffers, embeddings, small layers): held whole by every worker."""
    in_blocks = {n for b in blocks for n in b.names}
    return [n for n in placement.entries if n not in in_blocks]


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


class ShardedWeights:
    """The layout of one component on one member of a shard group (see the module docstring).

    Used by `MemoryManager` through `place()`, `release_transient()` and `release()`."""

    def __init__(self, placement: Placement, group: Any, rank: int, world: int, prefetch: bool = True,
                 on_device: bool = False):
        self.placement, self.group, self.rank, self.world = placement, group, rank, world
        self.prefetch, self.on_device = prefetch, on_device
        self.flats: list[_Flat] = []
        self.shards: dict[str, torch.Tensor] = {}
        self._pending: dict[str, tuple[Any, torch.Tensor]] = {}     # block -> (work, gathered buffer)
        self._live: dict[str, torch.Tensor] = {}                    # block -> gathered buffer in use
        self._successor: dict[str, str] = {}
        self._last: str | None = None
        self.reserved = 0
        self.kept_bytes = 0
        self.peak_live = 0

    # -- placement -------------------------------------------------------------------------------
    def place(self) -> None:
        p = self.placement
        p.offload_all()
        blocks = p.blocks(max(1, p.total_bytes // 16))
        kept = kept_names(p, blocks)
        self.kept_bytes = sum(p.entries[n].nbytes for n in kept)
        p.account(self.kept_bytes)                      # may raise: nothing placed yet
        for name in kept:
            p._set(name, p._copy_in(name))
            p.live.add(name)
        self.flats = [flat_layout(p, b, self.world) for b in blocks]
        chunks = sum(f.length // self.world for f in self.flats)
        workspace = (2 if self.prefetch else 1) * max((f.length for f in self.flats), default=0)
        try:
            p.account(chunks + workspace)
        except torch.OutOfMemoryError:
            p.offload_all()
            raise
        self.reserved = chunks + workspace
        for flat in self.flats:
            self.shards[flat.block.name] = self._make_shard(flat)
            hooks.attach(flat.block.module, SHARD_HOOK, self._pre(flat), self._post(flat), outer=True)
        self.peak_live = self.live_bytes()

    def _make_shard(self, flat: _Flat) -> torch.Tensor:
        whole = torch.zeros(flat.length, dtype=torch.uint8)
        for name, (offset, nbytes) in flat.offsets.items():
            whole[offset:offset + nbytes] = as_bytes(self.placement.host[name])
        chunk = flat.length // self.world
        return whole[self.rank * chunk:(self.rank + 1) * chunk].clone().to(self._where())

    def _where(self) -> torch.device:
        return self.placement.device if self.on_device else torch.device("cpu")

    # -- gathering ---------------------------------------------------------------------------------
    def _start_gather(self, flat: _Flat) -> tuple[Any, torch.Tensor]:
        buffer = torch.empty(flat.length, dtype=torch.uint8, device=self._where())
        parts = list(buffer.view(self.world, -1).unbind(0))
        work = self.group.allgather([parts], [self.shards[flat.block.name]])
        return work, buffer

    def _pre(self, flat: _Flat):
        def pre(module, args):
            name = flat.block.name
            work, buffer = self._pending.pop(name, None) or self._start_gather(flat)
            self._live[name] = buffer
            if self.prefetch:                         # overlap the next block's gather with this compute
                self._prefetch_after(name)
            self._track()
            work.wait()
            data = buffer if buffer.device == self.placement.device else buffer.to(self.placement.device)
            for tensor_name, (offset, nbytes) in flat.offsets.items():
                entry = self.placement.entries[tensor_name]
                like = entry.placeholder
                self.placement._set(tensor_name, data[offset:offset + nbytes].view(like.dtype).view(like.shape))
            if self._last is not None and self._last != name:
                self._successor[self._last] = name
            self._last = name
        return pre

    def _prefetch_after(self, name: str) -> None:
        nxt = self._successor.get(name)
        if nxt is None or nxt in self._pending or nxt in self._live:
            return
        flat = next(f for f in self.flats if f.block.name == nxt)
        self._pending[nxt] = self._start_gather(flat)

    def _post(self, flat: _Flat):
        def post(module, args, output):
            for tensor_name in flat.offsets:
                self.placement._set(tensor_name, self.placement.entries[tensor_name].placeholder)
            self._live.pop(flat.block.name, None)
        return post

    def _track(self) -> None:
        self.peak_live = max(self.peak_live, self.live_bytes())

    def live_bytes(self) -> int:
        """Bytes of this layout's tensors alive now: kept + shards + gathered buffers."""
        gathered = sum(b.numel() for b in self._live.values()) + sum(b.numel() for _, b in self._pending.values())
        return self.kept_bytes + sum(s.numel() for s in self.shards.values()) + gathered

    # -- end of a call, and unloading --------------------------------------------------------------
    def release_transient(self) -> None:
        """Finish any prefetch still in flight (every member issued it) and drop the gathered buffers."""
        for work, _ in self._pending.values():
            work.wait()
        self._pending.clear()
        for flat in self.flats:
            if flat.block.name in self._live:
                for tensor_name in flat.offsets:
                    self.placement._set(tensor_name, self.placement.entries[tensor_name].placeholder)
        self._live.clear()
        self._last = None

    def release(self) -> None:
        self.release_transient()
        for flat in self.flats:
            hooks.detach(flat.block.module, SHARD_HOOK)
        self.shards.clear()
        if self.reserved:
            self.placement.account(-self.reserved)
            self.reserved = 0
        self.placement.offload_all()

    def stats(self) -> dict[str, Any]:
        return {"kind": "shard", "rank": self.rank, "world": self.world, "blocks": len(self.flats),
                "shard_bytes": sum(s.numel() for s in self.shards.values()), "kept_bytes": self.kept_bytes,
                "reserved_bytes": self.reserved, "peak_live_bytes": self.peak_live,
                "model_bytes": self.placement.total_bytes}

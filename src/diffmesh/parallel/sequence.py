"""Sequence parallel for diffusion transformers: one image's tokens split across workers.

Split: every worker runs the same sampling job on the whole latent; inside the transformer it
keeps only its contiguous range of image tokens (`split_sizes`: as even as possible, the first
workers one token more, so 3 workers on 4096 tokens hold 1366, 1365, 1365). Text tokens stay
whole on every worker (they are few, and each worker needs them as keys). RoPE positions are
computed for the whole image and then split, so each token keeps its own position.
Run: per-token work (projections, norms, MLPs) needs no exchange; attention does, two ways:
  - Ulysses: one all-to-all turns (all heads, my tokens) into (my heads, all tokens); each worker
    attends its heads over the whole sequence and a second all-to-all turns the result back.
    The text rows of a worker's heads travel with the second exchange, so every worker ends with
    every head of the text rows. Heads split unevenly too (24 heads on 5 workers: 5,5,5,5,4).
  - ring: every worker keeps all heads and its queries; the key/value blocks of the image rows
    travel round the ring (send to the next, receive from the previous, overlapped with the
    attention of the block in hand). Each block gives a partial output and its log-sum-exp; the
    partials are merged in one fixed order (text, then worker 0, 1, ...) so every worker computes
    the replicated text rows bit for bit alike. Used when heads are fewer than workers, or asked.
Merge: the model's last layer all-gathers the output tokens, so every worker holds the whole
velocity, takes the same sampler step and stays in lockstep; rank 0's latent is the result.

Exchanges go through a standalone `torch.distributed` group of the workers (gloo through CPU
memory; NCCL between CUDA workers, written but not run yet: see `parallel.cfg.open_group`).
The numbers equal one device's within fp32 rounding: attention of a head over the same keys is
the same sum, and the ring's log-sum-exp merge only reorders it.

yunchang (xDiT's USP attention) was weighed: it installs and imports on CPU, but it needs equal
shards (sequence and heads divisible by the worker count: no 3 workers on 4096 tokens), uses
the process-wide default group (`dist.get_rank`, `new_group`, `batch_isend_irecv`), while
diffmesh workers hold several standalone groups, and keeps its groups in a module singleton.
xfuser runs diffusers pipelines with its own model wrappers (and pulls diffusers, transformers,
accelerate, distvae, av, peft): it cannot drive diffmesh's own modules. Hence this small module.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

MODES = ("auto", "ulysses", "ring")
FAMILIES = ("flux", "zimage", "qwenimage", "wan21", "wan22")      # DiT families whose forward takes `sequence` (models.dit.sequence)


def split_sizes(count: int, world: int) -> list[int]:
    """`count` items in `world` contiguous parts, the first `count % world` one larger."""
    base, extra = divmod(count, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def _offsets(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for s in sizes:
        out.append(total)
        total += s
    return out


def _partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over one key block: output (B,H,L,D) and log-sum-exp (B,H,L) in float32."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)[:2]
        return out.float(), lse.float()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v.float()), lse


def merge_partials(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine per-block (output, lse) in list order into the attention over all blocks."""
    lse = torch.logsumexp(torch.stack([p[1] for p in parts]), dim=0)
    out = torch.zeros_like(parts[0][0])
    for block_out, block_lse in parts:
        out += torch.exp(block_lse - lse).unsqueeze(-1) * block_out
    return out


class SequenceShard:
    """The `sequence` object a DiT forward takes (see `models.dit.sequence`) on one worker of a group.

    group: a ProcessGroupGloo / ProcessGroupNCCL of `world` workers, this one `rank`;
    mode: "ulysses", "ring", or "auto" (Ulysses when there are at least as many heads as workers);
    on_device: exchange device tensors directly (NCCL) instead of through CPU memory (gloo).
    """

    def __init__(self, group: Any, rank: int, world: int, mode: str = "auto", on_device: bool = False):
        if mode not in MODES:
            raise ValueError(f"sequence mode must be one of {MODES}, not {mode!r}")
        self.group, self.rank, self.world = group, rank, world
        self.mode, self.on_device = mode, on_device
        self.sizes: list[int] | None = None          # image rows per worker, set by split()
        self._tag = 0

    # -------------------------------------------------------------- moving tensors
    def _out(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor as the group sends it: on its device (NCCL) or float32 CPU memory (gloo)."""
        return t.contiguous() if self.on_device else t.detach().to("cpu").contiguous()

    def _back(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(like.device, like.dtype)

    # -------------------------------------------------------------- the three calls
    def split(self, tokens: torch.Tensor, dim: int = 1) -> torch.Tensor:
        sizes = split_sizes(tokens.shape[dim], self.world)
        if min(sizes) == 0:
            raise ValueError(f"{tokens.shape[dim]} image tokens cannot be split over {self.world} workers; "
                             "use fewer workers or a larger image")
        if self.sizes is not None and self.sizes != sizes:
            raise ValueError(f"one forward split {sum(self.sizes)} and {tokens.shape[dim]} tokens")
        self.sizes = sizes
        return tokens.narrow(dim, _offsets(sizes)[self.rank], sizes[self.rank])

    def gather(self, tokens: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """All workers' rows in order; uneven rows are padded to the largest for the all-gather."""
        sizes, self.sizes = self.sizes, None                # the forward is over: the next one splits anew
        rows = tokens.movedim(dim, 0)
        pad = max(sizes) - rows.shape[0]
        local = self._out(torch.cat([rows, rows.new_zeros((pad,) + rows.shape[1:])]) if pad else rows)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        self.group.allgather([parts], [local]).wait()
        whole = torch.cat([p[:n] for p, n in zip(parts, sizes)])
        return self._back(whole, tokens).movedim(0, dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, replicated: int = 0) -> torch.Tensor:
        if self.sizes is None:
            raise RuntimeError("attend() before split(): the model must split its image tokens first")
        heads = q.shape[1]
        ring = self.mode == "ring" or (self.mode == "auto" and heads < self.world)
        return self._ring(q, k, v, replicated) if ring else self._ulysses(q, k, v, replicated)

    def agree_stop(self, stop: bool) -> bool:
        """True on every worker when any asked to stop (one small all-reduce per step)."""
        from diffmesh.parallel.collectives import agree_stop

        return agree_stop(self.group, stop, self.on_device)

    # -------------------------------------------------------------- Ulysses
    def _alltoall(self, send: list[torch.Tensor], recv_numel: list[int], like: torch.Tensor) -> list[torch.Tensor]:
        """Send send[j] (any shape) to worker j; receive flat tensors of recv_numel[i] from worker i."""
        flat = self._out(torch.cat([t.reshape(-1) for t in send]))
        out = torch.empty(sum(recv_numel), dtype=flat.dtype, device=flat.device)
        self.group.alltoall_base(out, flat, list(recv_numel), [t.numel() for t in send]).wait()
        return list(self._back(out, like).split(recv_numel))

    def _ulysses(self, q, k, v, replicated):
        b, heads, length, d = q.shape
        rows, head_sizes = self.sizes, split_sizes(heads, self.world)
        hoff, mine = _offsets(head_sizes), head_sizes[self.rank]
        my_heads = slice(hoff[self.rank], hoff[self.rank] + mine)
        qkv = torch.stack((q, k, v))                                       # (3, B, H, L, D)
        send = [qkv[:, :, hoff[j]:hoff[j] + head_sizes[j], replicated:] for j in range(self.world)]
        got = self._alltoall(send, [3 * b * mine * n * d for n in rows], q)
        image = torch.cat([g.view(3, b, mine, n, d) for g, n in zip(got, rows)], dim=3)
        full = torch.cat((qkv[:, :, my_heads, :replicated], image), dim=3)   # (3, B, h, Lt + N, D)
        out = F.scaled_dot_product_attention(full[0], full[1], full[2])      # (B, h, Lt + N, D)
        text, image_out = out[:, :, :replicated], out[:, :, replicated:]
        roff = _offsets(rows)
        back = [torch.cat((text, image_out[:, :, roff[j]:roff[j] + rows[j]]), dim=2) for j in range(self.world)]
        got = self._alltoall(back, [b * h * length * d for h in head_sizes], q)
        return torch.cat([g.view(b, h, length, d) for g, h in zip(got, head_sizes)], dim=1)

    # -------------------------------------------------------------- ring
    def _ring(self, q, k, v, replicated):
        rows, world, rank = self.sizes, self.world, self.rank
        partials: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if replicated:
            partials[-1] = _partial_attention(q, k[:, :, :replicated], v[:, :, :replicated])
        block = self._out(torch.stack((k[:, :, replicated:], v[:, :, replicated:])))   # (2, B, H, n, D)
        owner = rank
        for step in range(world):
            pending = []
            if step < world - 1:                         # pass the block on while attending to it
                self._tag += 1
                incoming_owner = (owner - 1) % world
                shape = block.shape[:3] + (rows[incoming_owner],) + block.shape[4:]
                incoming = torch.empty(shape, dtype=block.dtype, device=block.device)
                pending = [self.group.send([block], (rank + 1) % world, self._tag),
                           self.group.recv([incoming], (rank - 1) % world, self._tag)]
            kv = self._back(block, q)
            partials[owner] = _partial_attention(q, kv[0], kv[1])
            for work in pending:
                work.wait()
            if pending:
                block, owner = incoming, incoming_owner
        order = ([-1] if replicated else []) + list(range(world))
        return merge_partials([partials[i] for i in order]).to(q.dtype)


class SequenceModel:
    """A DiffusionModel that runs its transformer on this worker's share of the image tokens."""

    def __init__(self, model: Any, shard: SequenceShard):
        self.model, self.shard = model, shard

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.model(x, timestep, context, sequence=self.shard, **extra)


# ------------------------------------------------------------------ engine side

@dataclass(frozen=True)
class SequenceGroup:
    """Workers joined by the group `group`; rank = position in `workers`."""

    workers: tuple[int, ...]
    group: str


def split_sequence(job, group: SequenceGroup, mode: str = "auto") -> list[tuple[int, Any, dict]]:
    """(worker, job, sequence kwargs) for each member: the same job; the rank picks the rows."""
    world = len(group.workers)
    return [(w, job, {"group": group.group, "rank": r, "world": world, "mode": mode})
            for r, w in enumerate(group.workers)]


def merge_sequence(results: list[torch.Tensor]) -> torch.Tensor:
    """Every member stepped on the same gathered velocity; keep rank 0's latent."""
    return results[0]


Call = Callable[..., Any]


class SequenceGroups:
    """Engine side: one process group per ordered set of workers, opened on first use (every member
    joins at once), dropped after a failure. A restarted worker process has lost its groups, so the
    key includes each member's restart count (`generation`)."""

    def __init__(self, call: Call, generation: Callable[[int], int] = lambda worker: 0,
                 host: str = "127.0.0.1", timeout_s: float = 600.0,
                 device_of: Callable[[int], str] = lambda worker: "cpu",
                 rendezvous: Callable[[int], str] | None = None):
        self._call, self._generation, self._device_of = call, generation, device_of
        self._host, self._timeout_s, self._rendezvous = host, timeout_s, rendezvous
        self._groups: dict[tuple, SequenceGroup] = {}
        self._count = 0
        self._lock = threading.Lock()

    def group(self, workers: tuple[int, ...]) -> SequenceGroup:
        key = tuple(workers) + tuple(self._generation(w) for w in workers)
        with self._lock:
            found = self._groups.get(key)
            if found is None:
                found = self._groups[key] = self._open(tuple(workers))
            return found

    def _open(self, workers: tuple[int, ...]) -> SequenceGroup:
        from diffmesh.parallel.cfg import free_port, group_backend

        self._count += 1
        name = f"seq-{'-'.join(map(str, workers))}-{self._count}-{os.urandom(3).hex()}"
        # rank 0 hosts the group's store: on its own node when the executor spans machines (Ray)
        init = self._rendezvous(workers[0]) if self._rendezvous else f"tcp://{self._host}:{free_port(self._host)}"
        backend = group_backend([self._device_of(w) for w in workers])
        futures = [self._call(w, "init_process_group", rank, len(workers), init, name=name,
                              timeout_s=self._timeout_s, backend=backend) for rank, w in enumerate(workers)]
        for future in futures:
            future.result()
        return SequenceGroup(workers, name)

    def drop(self, group: SequenceGroup) -> None:
        """Forget a group after a failed job; each member closes its side (errors ignored)."""
        with self._lock:
            for key in [k for k, v in self._groups.items() if v == group]:
                del self._groups[key]
        for worker in group.workers:
            try:
                self._call(worker, "destroy_process_group", group.group).result(timeout=30)
            except Exception:  # noqa: BLE001 - the worker may be dead or restarting; its group is gone then
                pass

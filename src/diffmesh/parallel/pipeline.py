"""The micro-batch pipeline of layer split: several rows of one model call in flight at once.

A layer-split group (`parallel.layersplit`) runs every block on one worker; alone, one batch makes
the workers take turns. When the sampler hands the model 2+ rows (batch > 1, or cfg != 1, which
doubles the rows), `PipelineModel` cuts the call into micro-batches of contiguous rows and runs each
micro-batch's forward in a thread of its own on every member. A baton lets one thread of a worker
compute at a time (the worker's device, or its one CPU thread, is not shared by two forwards); a
thread gives the baton up while it waits for another worker's block output. So while worker r runs
its blocks on micro-batch m, worker r-1 already runs its blocks on micro-batch m+1 (GPipe's
forward-only schedule, found by the threads rather than written down: any block order works, a
UNet's skip connections included). Among the threads ready to run, the lowest micro-batch gets the
baton, so micro-batch 0 is never held up by later ones.

Exact: the rows of these models are independent, so the micro-batches' outputs, put back in order,
are one device's output (up to float rounding of the smaller matrix products, ~1e-7 relative).

How many: one micro-batch per row, at most `AUTO_LIMIT`; the environment variable
`DIFFMESH_MICRO_BATCHES` (read by the engine, sent to every member in the layout) overrides it
(1: the serial path). One row, or an override of 1, runs the serial path unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from diffmesh.errors import ConfigError

ENV = "DIFFMESH_MICRO_BATCHES"
AUTO_LIMIT = 8          # beyond 8 the bubble ((W-1)/(M+W-1)) shrinks little and each micro-batch gets thin
LIMIT = 64              # the most a tag has room for (`MicroBatchRun.tag`)
SEQ_BITS = 20           # tensors sent per micro-batch per call: < 2**20
# extras whose handling attaches hooks for the length of one call (GLIGEN's fusers): two calls
# interleaved by the pipeline would attach them twice, so such calls stay serial
SERIAL_EXTRAS = ("gligen_boxes",)


def requested_micro_batches(environ: dict | None = None) -> int | None:
    """The `DIFFMESH_MICRO_BATCHES` override (None: automatic)."""
    text = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"{ENV}={text!r} is not a number of micro-batches", where=ENV,
                          fix=f"set a whole number >= 1 (1 keeps layer split serial), or unset it for one "
                              f"micro-batch per row (at most {AUTO_LIMIT})")
    return count


def micro_batch_count(rows: int, requested: int | None = None) -> int:
    limit = AUTO_LIMIT if requested is None else min(requested, LIMIT)
    return max(1, min(rows, limit))


def row_bounds(rows: int, count: int) -> list[tuple[int, int]]:
    """[start, stop) of each micro-batch: contiguous, sizes differing by at most one row."""
    base, extra = divmod(rows, count)
    bounds, at = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        bounds.append((at, at + size))
        at += size
    return bounds


def take_rows(value: Any, rows: int, start: int, stop: int) -> Any:
    """Rows [start, stop) of every tensor in `value` with `rows` rows; anything else as it is.
    By the DiffusionModel protocol every per-row input (x, timesteps, context, extras, ControlNet
    residuals) has the call's rows; a tensor with another first size is shared by all rows."""
    def cut(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor) and leaf.ndim >= 1 and leaf.shape[0] == rows:
            return leaf[start:stop]
        return leaf
    return pytree.tree_map(cut, value)


class Cancelled(RuntimeError):
    """Another micro-batch of the same call failed: this one stops at its next wait."""


class MicroBatchRun:
    """One pipelined model call on one member: a thread per micro-batch, one baton.

    `index` counts this member's pipelined calls; every member makes the same calls, so it is the
    same on all of them and, with the micro-batch and a per-thread sequence number, names each
    block output sent (`tag`)."""

    def __init__(self, count: int, index: int, device: torch.device):
        self.count, self.index, self.device = count, index, device
        self._cond = threading.Condition()
        self._holder: int | None = None
        self._ready: set[int] = set()
        self._local = threading.local()
        self._finished = 0
        self.failed: BaseException | None = None

    # -- what the hooks ask --------------------------------------------------------------------------
    @property
    def micro_batch(self) -> int:
        return self._local.micro_batch

    def next_tag(self) -> int:
        """The tag of this thread's next tensor: the same on sender and receivers, because every
        member's thread for this micro-batch meets the same blocks with the same outputs in order."""
        seq = self._local.seq
        self._local.seq = seq + 1
        if seq >= 1 << SEQ_BITS:
            raise RuntimeError(f"more than {1 << SEQ_BITS} block outputs in one forward: the pipeline's tags "
                               f"cannot name them; set {ENV}=1")
        return (((self.index % 4) * LIMIT + self.micro_batch) << SEQ_BITS) | seq

    @contextlib.contextmanager
    def waiting(self):
        """Give the baton up while this thread waits for another worker (the next micro-batch computes)."""
        self._release()
        try:
            yield
        finally:
            self._acquire()

    # -- the baton -------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        mine = self.micro_batch
        with self._cond:
            self._ready.add(mine)
            self._cond.wait_for(lambda: self.failed is not None
                                or (self._holder is None and mine == min(self._ready)))
            self._ready.discard(mine)
            if self.failed is not None:
                raise Cancelled(f"micro-batch {mine} stopped: another micro-batch of the call failed")
            self._holder = mine

    def _release(self) -> None:
        with self._cond:
            if self._holder == self.micro_batch:
                self._holder = None
            self._cond.notify_all()

    # -- running -----------------------------------------------------------------------------------------
    def run(self, fn: Callable[[int], Any], after: Callable[[int], None] | None = None) -> list[Any]:
        """[fn(0), ..., fn(count - 1)], each in its own thread (torch's grad and inference modes and
        the context variables of the caller carried over), then `after(i)` in that thread without the
        baton; the first failure is raised at once."""
        results: list[Any] = [None] * self.count
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def body(i: int, context: contextvars.Context) -> None:
            self._local.micro_batch, self._local.seq = i, 0
            try:
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    self._acquire()
                    try:
                        results[i] = context.run(fn, i)
                    finally:
                        self._release()
                    if after is not None:
                        after(i)
            except BaseException as exc:           # noqa: BLE001 - handed to the caller below
                with self._cond:
                    if self.failed is None:
                        self.failed = exc
                    self._cond.notify_all()
            finally:
                with self._cond:
                    self._finished += 1
                    self._cond.notify_all()

        threads = [threading.Thread(target=body, args=(i, contextvars.copy_context()), daemon=True,
                                    name=f"diffmesh-microbatch-{i}") for i in range(self.count)]
        for thread in threads:
            thread.start()
        with self._cond:
            # a failed call does not wait for threads blocked on a partner that will not send: they are
            # released by the group's timeout; they find `failed` set and touch nothing more
            self._cond.wait_for(lambda: self.failed is not None or self._finished == self.count)
        if self.failed is not None:
            raise self.failed
        return results


class PipelineModel:
    """A DiffusionModel that runs a layer-split member's calls of 2+ rows as micro-batches
    (`LayerSplit.pipelined`); a call of one row, or with the pipeline off, runs as before."""

    def __init__(self, model: Any, split: Any, requested: int | None = None):
        self.model, self.split, self.requested = model, split, requested

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, **extra: Any) -> torch.Tensor:
        rows = int(x.shape[0])
        count = micro_batch_count(rows, self.requested)
        reason = self.split.pipeline_off_reason()
        if reason is None and any(k in extra for k in SERIAL_EXTRAS):
            reason = f"inputs {[k for k in SERIAL_EXTRAS if k in extra]} attach hooks per call"
        if count < 2 or reason is not None:
            self.split.note_serial(rows, reason or ("one row" if rows < 2 else f"{ENV}=1"))
            return self.model(x, timestep, context, **extra)
        bounds = row_bounds(rows, count)
        inputs = (timestep, context, extra)

        def one(i: int) -> torch.Tensor:
            start, stop = bounds[i]
            t, c, e = take_rows(inputs, rows, start, stop)
            return self.model(x[start:stop], t, c, **e)
        return torch.cat(self.split.pipelined(count, rows, one))

"""One worker per device: owns that device's memory manager and models, runs model work.

A `Worker` is plain Python: the in-process executor calls it directly, the multi-process
executor runs it in a child process and forwards calls to it. Its public methods are the only
operations the engine can ask of a device; each takes handles and small tensors and returns
small tensors, so calls can cross process boundaries.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import torch

from diffmesh.errors import InterruptedError_
from diffmesh.executors.base import WorkerSpec
from diffmesh.models.handle import ModelHandle

Emit = Callable[[dict], None]


def _no_emit(event: dict) -> None:
    return None


class Worker:
    """Runs text encoding, sampling and VAE work for handles on one device."""

    def __init__(self, spec: WorkerSpec):
        from diffmesh.devices.memory import MemoryManager  # imported here: a worker is built in its own process

        self.spec = spec
        self.device = torch.device(spec.device)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.memory = MemoryManager(self.device, spec.settings)
        self.interrupt_flag = threading.Event()
        self._weights = None
        self._groups: dict[str, tuple[Any, str]] = {}     # groups this worker belongs to: name -> (group, backend)

    @property
    def weights(self):
        """CPU copies of base weights by file: a new LoRA strength or CLIP skip rebuilds the
        component from here instead of reading the file again (created on first model use)."""
        if self._weights is None:
            from diffmesh.models.load import WeightStore

            self._weights = WeightStore()
        return self._weights

    # -- helpers ---------------------------------------------------------------------------
    def _run(self, handle: ModelHandle, fn: Callable[[Any], Any], layout: dict | None = None) -> Any:
        """Run `fn` on the materialized component; the memory manager handles loading and OOM retry.
        With `layout` this worker holds its part of a model shared by a group (`parallel.grouped`)."""
        from diffmesh.models.load import build_component

        def build(device, dtype):
            return build_component(handle, device, dtype, self.weights)
        if layout is None:
            return self.memory.run(handle, build, fn)
        from diffmesh.parallel.grouped import run_grouped

        return run_grouped(self.memory, handle, build, fn, layout, self._group(layout["group"]))

    def _group(self, name: str) -> tuple[Any, str]:
        if name not in self._groups:
            raise ValueError(f"worker {self.spec.worker_id} is not in process group {name!r}; "
                             "the engine must call init_process_group first")
        return self._groups[name]

    def _check_interrupt(self) -> None:
        if self.interrupt_flag.is_set():
            raise InterruptedError_("interrupted")

    # -- the operations ----------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        import os

        return {"worker_id": self.spec.worker_id, "device": str(self.device), "threads": torch.get_num_threads(),
                "pid": os.getpid()}

    def encode_text(self, clip: ModelHandle, text: str, emit: Emit = _no_emit) -> list:
        return self._run(clip, lambda encoder: encoder.encode(text))

    def encode_image(self, clip_vision: ModelHandle, image: torch.Tensor, crop: bool = True,
                     emit: Emit = _no_emit):
        """CLIPVisionEncode: (B,H,W,C) images -> `models.clip_vision.ClipVisionOutput` (CPU tensors)."""
        return self._run(clip_vision, lambda encoder: encoder.encode_image(image, crop))

    def sample(self, model: ModelHandle, job, emit: Emit = _no_emit, group: str | None = None,
               sequence: dict | None = None, layout: dict | None = None, patch: dict | None = None) -> torch.Tensor:
        """Run a sampling job. A CFG-parallel half (`job.cfg_part`) exchanges through group `group`;
        with `sequence` ({"group", "rank", "world", "mode"}) the transformer runs on this worker's
        share of the image tokens (`parallel.sequence`); with `layout` ({"kind": "shard" |
        "layersplit", "group", "rank", "world", "shares"}) this worker holds only its part of the
        model's weights (`parallel.shard`, `parallel.layersplit`); with `patch` ({"group", "rank",
        "world"}) the UNet runs on this worker's band of latent rows (`parallel.patch`)."""
        from diffmesh.parallel.patch import PatchModel
        from diffmesh.parallel.sequence import SequenceModel
        from diffmesh.sampling.pipeline import run_sample_job

        self.interrupt_flag.clear()
        shard = self._sequence_shard(sequence) if sequence else (self._patch_shard(patch) if patch else None)
        wrap = PatchModel if patch else SequenceModel
        agreed = [False]                    # CFG x sequence: the stop the sequence group agreed on
        if job.cfg_part is not None:
            # alone, a CFG half sends its own interrupt flag; in CFG x sequence it sends the one its sequence
            # group agreed on, so all four (or more) workers stop at the same CFG exchange
            job = self._with_exchange(job, group, (lambda: agreed[0]) if shard is not None else None)

        def on_step(step: int, total: int, x0: torch.Tensor | None) -> None:
            if shard is not None:           # the members stop together, at the same step
                agreed[0] = shard.agree_stop(self.interrupt_flag.is_set())
                if agreed[0] and job.exchange is None:
                    raise InterruptedError_("interrupted")
            elif job.exchange is None:      # a CFG-parallel half stops at the exchange, with its partner
                self._check_interrupt()
            emit({"type": "progress", "value": step, "max": total, "x0": x0})

        def run(unet):
            with self._control_networks(job) as networks:
                return run_sample_job(unet if shard is None else wrap(unet, shard), job, on_step,
                                      control_networks=networks)

        return self._run(model, run, layout)

    @contextlib.contextmanager
    def _control_networks(self, job):
        """The ControlNets the job's conditioning uses, held on this device while it samples."""
        from diffmesh.models.controlnet import build_controlnet
        from diffmesh.sampling.control import control_refs

        with contextlib.ExitStack() as stack:
            networks = {}
            for ref in control_refs((job.positive, job.negative)):
                def build(device, dtype, ref=ref):
                    return build_controlnet(ref, device, dtype, self.weights)
                networks[ref] = stack.enter_context(self.memory.use(ref, build))
            yield networks

    def _sequence_shard(self, sequence: dict):
        from diffmesh.parallel.sequence import SequenceShard

        name = sequence["group"]
        if name not in self._groups:
            raise ValueError(f"worker {self.spec.worker_id} is not in process group {name!r}; "
                             "the engine must call init_process_group first")
        handle, backend = self._groups[name]
        return SequenceShard(handle, sequence["rank"], sequence["world"], sequence.get("mode", "auto"),
                             on_device=backend == "nccl")

    def _patch_shard(self, patch: dict):
        from diffmesh.parallel.patch import PatchShard

        if patch["group"] not in self._groups:
            raise ValueError(f"worker {self.spec.worker_id} is not in process group {patch['group']!r}; "
                             "the engine must call init_process_group first")
        handle, backend = self._groups[patch["group"]]
        return PatchShard(handle, patch["rank"], patch["world"], on_device=backend == "nccl")

    def vae_decode(self, vae: ModelHandle, samples: torch.Tensor, tiling: dict | None = None,
                   emit: Emit = _no_emit, patch: dict | None = None) -> torch.Tensor:
        """Latents -> images; with `patch` ({"group", "rank", "world"}) this worker's band of image rows."""
        if patch:
            from diffmesh.parallel.patch import decode_band

            shard = self._patch_shard(patch)
            return self._run(vae, lambda model: decode_band(model, samples, shard))
        if tiling:
            return self._run(vae, lambda model: model.decode_tiled(samples, **tiling))
        return self._run(vae, lambda model: model.decode(samples))

    def vae_encode(self, vae: ModelHandle, pixels: torch.Tensor, emit: Emit = _no_emit,
                   patch: dict | None = None, tiling: dict | None = None) -> torch.Tensor:
        """Images -> latents; with `patch` this worker's band of latent rows; with `tiling`
        ({"tile_size", "overlap"}) VAEEncodeTiled's tiles."""
        if patch:
            from diffmesh.parallel.patch import encode_band

            shard = self._patch_shard(patch)
            return self._run(vae, lambda model: encode_band(model, pixels, shard))
        if tiling:
            # a video VAE (Wan) has no tiled encoder: it encodes whole, as before
            return self._run(vae, lambda model: model.encode_tiled(pixels, **tiling) if hasattr(model, "encode_tiled")
                             else model.encode(pixels))
        return self._run(vae, lambda model: model.encode(pixels))

    def vae_tiles(self, vae: ModelHandle, tensor: torch.Tensor, part: dict, emit: Emit = _no_emit) -> dict:
        """VAEDecodeTiled / VAEEncodeTiled tiles dealt over workers: `part` {"tile_size", "overlap",
        "encode", "rank", "world"}; this worker runs tiles rank, rank + world, ... of the plan and
        returns {"plan": TilePlan, "pieces": {tile index: output}}; the engine blends them."""
        def run(model):
            plan = model.tile_plan(tuple(tensor.shape), part["tile_size"], part["overlap"], part["encode"])
            jobs = plan.jobs()
            mine = list(range(part["rank"], len(jobs), part["world"]))
            pieces = model.run_tiles(tensor, [jobs[i] for i in mine], part["encode"])
            return {"plan": plan, "pieces": dict(zip(mine, pieces))}
        return self._run(vae, run)

    def _with_exchange(self, job, group: str | None, should_stop=None):
        from dataclasses import replace

        from diffmesh.parallel.cfg import CfgExchange

        if group not in self._groups:
            raise ValueError(f"worker {self.spec.worker_id} is not in process group {group!r}; "
                             "the engine must call init_process_group first")
        handle, backend = self._groups[group]
        return replace(job, exchange=CfgExchange(handle, job.cfg_part, should_stop or self.interrupt_flag.is_set,
                                                 on_device=backend == "nccl"))

    # -- collectives ---------------------------------------------------------------------------
    def init_process_group(self, rank: int, world: int, init_method: str, name: str = "default",
                           timeout_s: float = 120.0, backend: str = "gloo") -> dict[str, Any]:
        """Join the group `name` (all members call this at once; it returns when all joined).
        `backend`: "gloo" (through CPU memory) or "nccl" (CUDA workers; not run yet)."""
        from diffmesh.parallel.cfg import open_group

        group = open_group(rank, world, init_method, name, timeout_s, backend, str(self.device))
        self._groups[name] = (group, backend)
        return {"worker_id": self.spec.worker_id, "group": name, "rank": rank, "world": world, "backend": backend}

    def destroy_process_group(self, name: str) -> None:
        self._groups.pop(name, None)

    def probe_link(self, name: str, sizes: list[int], repeats: int) -> dict[str, list[float]]:
        """Time all-gathers in group `name` (every member at once): `diffmesh bench`'s link figures."""
        from diffmesh.benchmarks.link import probe

        group, backend = self._group(name)
        return probe(group, group.size(), tuple(sizes), repeats, on_device=backend == "nccl")

    def measure_speed(self, seconds: float = 0.3) -> float:
        """Relative speed for the planner: convolutions per second at a UNet-like shape."""
        import time

        x = torch.randn(1, 64, 32, 32, device=self.device)
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(self.device)
        count, start = 0, time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() - start < seconds:
                conv(x)
                count += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return count / (time.perf_counter() - start)

    def memory_stats(self) -> dict[str, Any]:
        return self.memory.stats()

    def memory_free(self) -> float | None:
        """Room left under this device's budget in bytes (None: no budget), for layer-split shares."""
        free = self.memory.free_bytes()
        return None if free == float("inf") else free

    def free(self, unload_models: bool = True) -> None:
        if unload_models:
            self.memory.unload_all()

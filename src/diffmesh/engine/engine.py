"""The engine runs model work for nodes: it decides where (placement) and how (parallel
strategy) and calls the executor. Nodes hold handles and call these methods; they never touch
a device.

`Engine` is the scope of all workers; `Engine.acquire()` leases a subset for one prompt (queue
parallel) and returns a `Lease` whose `.engine` offers the same operations restricted to those
workers. Every operation survives one worker death: a call that fails with `WorkerDied` is
retried once on a live worker (the executor restarts the dead one meanwhile).

How a server dispatcher runs several prompts at once (queue parallel):

    slots = engine.slots()                          # prompts to run at once (1 unless auto/queue)
    lease = engine.acquire(pending=len(queue), timeout=0)   # None: every worker is busy, wait
    # in a thread per prompt:
    try:
        prompt_executor.execute(..., engine=lease.engine)   # nodes' ctx.engine = lease.engine
    finally:
        lease.release()
    lease.engine.interrupt()                        # /interrupt for that prompt only

With `pending > 1` a lease holds one worker; a lone prompt gets every free worker, so the
planner can use batch or CFG parallel for it. `engine.describe()` reports workers, placement
and the last plan (for /system_stats); progress events carry "worker", "device", "strategy".
"""

from __future__ import annotations

import logging
from dataclasses import replace
from concurrent.futures import Future
from typing import Any, Callable

import torch

from diffmesh.engine.placement import PlacementPlan, WorkerInfo, place, plan_placement, worker_labels
from diffmesh.engine.planner import MODES, SamplePlan, Workload, plan_sample
from diffmesh.errors import ConfigError, WorkerDied
from diffmesh.executors.base import Executor
from diffmesh.models.handle import ModelHandle
from diffmesh.parallel import batch as batch_parallel
from diffmesh.parallel import cfg as cfg_parallel
from diffmesh.parallel import patch as patch_parallel
from diffmesh.parallel import patch_vae
from diffmesh.parallel import sequence as sequence_parallel
from diffmesh.parallel.queue import WorkerPool
from diffmesh.parallel.request import parallel_options, plain_handle
from diffmesh.sampling.samplers import get_sampler

Progress = Callable[[dict], None]
log = logging.getLogger("diffmesh.engine")


def _wait_all(futures: list[Future]) -> list[tuple[Any, BaseException | None]]:
    """(result, error) for each future, after all of them finished."""
    out = []
    for future in futures:
        try:
            out.append((future.result(), None))
        except BaseException as exc:  # noqa: BLE001 - sorted by the caller
            out.append((None, exc))
    return out


def image_tokens(model: ModelHandle, job) -> int:
    """Image tokens of a diffusion-transformer job (2x2 patches per frame), 0 for other models:
    the planner offers sequence parallel only for the transformers that take the seam."""
    if model.family not in sequence_parallel.FAMILIES:
        return 0
    shape = tuple(job.latent.shape)
    frames = shape[2] if len(shape) == 5 else 1
    return frames * -(-shape[-2] // 2) * -(-shape[-1] // 2)


def patch_rows(model: ModelHandle, job) -> tuple[int, int]:
    """(latent rows, band unit) of an SD-UNet job for patch parallel; (0, 1) for other models."""
    if model.family not in patch_parallel.FAMILIES or job.latent.ndim != 4:
        return 0, 1
    return int(job.latent.shape[-2]), patch_parallel.FAMILY_ALIGN[model.family]


class EngineScope:
    """Model operations over a set of workers: placement, parallel plan, retry on worker death."""

    def __init__(self, root: "Engine", worker_ids: list[int]):
        self.root = root
        self.worker_ids = list(worker_ids)

    # -- what the scope sees -------------------------------------------------------------------
    @property
    def workers(self) -> list[WorkerInfo]:
        return [self.root.infos[w] for w in self.worker_ids]

    @property
    def placement(self) -> PlacementPlan:
        return plan_placement(self.workers, self.root.default_device, self.root.split_components)

    def worker_for(self, handle: ModelHandle) -> int:
        """Where `handle` runs: always one of this scope's workers (a lease never reaches another's)."""
        others = [info for w, info in self.root.infos.items() if w not in self.worker_ids]
        return place(handle, self.placement, self.workers, others)

    def plan(self, model: ModelHandle, job) -> SamplePlan:
        request = parallel_options(model)                          # a node's request wins over the flag
        mode = request.strategy if request is not None else self.root.parallel
        rows, align = patch_rows(model, job)
        workload = Workload(batch=int(job.latent.shape[0]), cfg=float(job.cfg), tokens=image_tokens(model, job),
                            batch_coupled=get_sampler(job.sampler_name).batch_coupled,
                            patch_rows=rows, patch_align=align)
        main = self.worker_for(plain_handle(model))
        workers = request.workers_for(self.workers, main) if request is not None else self.workers
        plan = plan_sample(workload, workers, mode, main_worker=main)
        from diffmesh.engine.explain import memory_plan      # models larger than a device; --explain

        return memory_plan(self, model, job, mode, plan, self.root.explain)

    # -- calls with one retry ------------------------------------------------------------------
    def _retry_worker(self, failed: int) -> int:
        ex = self.root.executor
        live = [w for w in self.worker_ids if w != failed and ex.is_alive(w)]
        idle = [w for w in live if not ex.busy(w)]
        return (idle or live or [failed])[0]

    def _call_once_retried(self, worker: int, method: str, *args: Any, progress: Progress | None = None,
                           **kwargs: Any) -> Any:
        call = self.root.executor.call
        try:
            return call(worker, method, *args, on_event=self._tagged(progress, worker, "single"), **kwargs).result()
        except WorkerDied as exc:
            retry = self._retry_worker(worker)
            log.warning("%s; retrying %s() once on worker %s", exc, method, retry)
            return call(retry, method, *args, on_event=self._tagged(progress, retry, "single"), **kwargs).result()

    def _tagged(self, progress: Progress | None, worker: int, strategy: str) -> Progress | None:
        if progress is None:
            return None
        where = {"worker": worker, "device": self.root.infos[worker].label, "strategy": strategy}
        return lambda event: progress({**event, **where})

    # -- operations ----------------------------------------------------------------------------
    def encode_text(self, clip: ModelHandle, text: str) -> list:
        return self._call_once_retried(self.worker_for(clip), "encode_text", plain_handle(clip), text)

    def encode_image(self, clip_vision: ModelHandle, image: torch.Tensor, crop: bool = True):
        """CLIP-vision encoding on the text encoders' worker (as ComfyUI's text_encoder_device)."""
        return self._call_once_retried(self.worker_for(clip_vision), "encode_image", plain_handle(clip_vision),
                                       image, crop)

    def vae_decode(self, vae: ModelHandle, samples: torch.Tensor, tiling: dict | None = None) -> torch.Tensor:
        """Latents -> images; one image split in bands of rows, tiles dealt over the workers
        (`parallel.patch_vae`), or a batch split over the scope's workers (each sample decodes alone)."""
        spread = patch_vae.run_vae(self, vae, samples, tiling, encode=False)
        return spread if spread is not None else self._vae_call("vae_decode", vae, samples, tiling)

    def vae_encode(self, vae: ModelHandle, pixels: torch.Tensor, tiling: dict | None = None) -> torch.Tensor:
        """Images -> latents, spread as `vae_decode`; `tiling` {"tile_size", "overlap"}: VAEEncodeTiled."""
        spread = patch_vae.run_vae(self, vae, pixels, tiling, encode=True)
        if spread is not None:
            return spread
        return self._vae_call("vae_encode", vae, pixels, **({"tiling": tiling} if tiling else {}))

    def sample(self, model: ModelHandle, job, progress: Progress | None = None) -> torch.Tensor:
        plan = self.plan(model, job)
        self.root.last_plan = plan
        handle = plain_handle(model)
        if plan.strategy == "batch":
            return self._sample_batch(handle, job, plan, progress)
        if plan.strategy == "cfg":
            return self._sample_cfg(handle, job, plan, progress)
        if plan.strategy in ("sequence", "cfg_sequence", "patch", "batch_patch", "cfg_patch"):
            return self._sample_sequence(handle, job, plan, progress)
        if plan.strategy in ("shard", "layersplit"):
            from diffmesh.parallel.grouped import sample_pooled

            return sample_pooled(self, handle, job, plan, progress)
        return self._call_once_retried(plan.workers[0], "sample", handle, job, progress=progress)

    def _run_parts(self, method: str, parts: list[tuple[int, tuple]], progress: Progress | None = None,
                   **kwargs: Any) -> list:
        """Run `method(*args)` for each (worker, args) at once; a part whose worker died runs once more
        on a live worker. Progress comes from the first part only (the parts move in step)."""
        call = self.root.executor.call
        futures = [call(w, method, *args, on_event=self._tagged(progress, w, "batch") if i == 0 else None, **kwargs)
                   for i, (w, args) in enumerate(parts)]
        outcomes = _wait_all(futures)
        errors = [e for _, e in outcomes if e is not None and not isinstance(e, WorkerDied)]
        if errors:
            raise errors[0]
        results = []
        for (worker, args), (result, error) in zip(parts, outcomes):
            if error is not None:
                retry = self._retry_worker(worker)
                log.warning("%s; retrying its batch rows on worker %s", error, retry)
                result = call(retry, method, *args, **kwargs).result()
            results.append(result)
        return results

    def _sample_batch(self, handle: ModelHandle, job, plan: SamplePlan, progress: Progress | None) -> torch.Tensor:
        parts = [(w, (handle, job.sliced(start, stop))) for w, (start, stop) in zip(plan.workers, plan.ranges)]
        return batch_parallel.merge_batch(self._run_parts("sample", parts, progress))

    def _vae_parts(self, vae: ModelHandle, rows: int) -> list[tuple[int, int, int]]:
        """(worker, start, stop) for a VAE call: split by batch when allowed, else one worker."""
        main = self.worker_for(vae)
        mode = self.root.parallel
        if rows < 2 or len(self.worker_ids) < 2 or vae.device not in (None, "", "default") \
                or mode not in ("auto", "batch"):
            return [(main, 0, rows)]
        workers = [main] + [w for w in self.worker_ids if w != main]
        ranges = batch_parallel.split_batch(rows, [self.root.infos[w].speed for w in workers])
        return [(w, a, b) for w, (a, b) in zip(workers, ranges) if b > a]

    def _vae_call(self, method: str, vae: ModelHandle, tensor: torch.Tensor, *extra: Any,
                  **kwargs: Any) -> torch.Tensor:
        parts = self._vae_parts(vae, int(tensor.shape[0]))
        handle = plain_handle(vae)
        if len(parts) == 1:
            return self._call_once_retried(parts[0][0], method, handle, tensor, *extra, **kwargs)
        results = self._run_parts(method, [(w, (handle, tensor[a:b], *extra)) for w, a, b in parts], **kwargs)
        return torch.cat(results, dim=0)            # images (B,H,W,3) or latents (B,4,h,w)

    def _sample_cfg(self, handle: ModelHandle, job, plan: SamplePlan, progress: Progress | None) -> torch.Tensor:
        cond, uncond = plan.workers
        pair = self.root.cfg_groups.pair(cond, uncond)
        halves = cfg_parallel.split_cfg(job, pair)
        futures = [self.root.executor.call(w, "sample", handle, half, group=pair.group,
                                           on_event=self._tagged(progress, w, "cfg") if i == 0 else None)
                   for i, (w, half) in enumerate(halves)]
        outcomes = _wait_all(futures)
        errors = [e for _, e in outcomes if e is not None]
        if not errors:
            return cfg_parallel.merge_cfg([r for r, _ in outcomes])
        self.root.cfg_groups.drop(pair)
        died = [(w, e) for (w, _), (_, e) in zip(halves, outcomes) if isinstance(e, WorkerDied)]
        if not died:
            raise errors[0]
        retry = self._retry_worker(died[0][0])
        log.warning("%s; retrying the whole job once on worker %s without CFG parallel", died[0][1], retry)
        return self.root.executor.call(retry, "sample", handle, job,
                                       on_event=self._tagged(progress, retry, "single")).result()

    def _patch_members(self, job, workers: tuple[int, ...]) -> tuple[list, list]:
        """(worker, job, call kwargs) for one patch group running `job`, and the group opened (none
        for a lone worker: it runs the job whole). The same job everywhere; the rank picks the band."""
        if len(workers) == 1:
            return [(workers[0], job, {})], []
        group = self.root.sequence_groups.group(tuple(workers))
        return [(w, job, {"patch": {"group": group.group, "rank": r, "world": len(workers)}})
                for r, w in enumerate(workers)], [group]

    def _sequence_parts(self, job, plan: SamplePlan) -> tuple[list, list]:
        """(worker, job, call kwargs) per member, and the groups opened. cfg_sequence / cfg_patch: the
        first half of the workers runs cond, the second uncond, each half one sequence / patch group;
        rank i of one half exchanges its CFG prediction with rank i of the other. batch_patch: the
        workers sharing a batch range form one patch group running those rows."""
        attention = self.root.sequence_attention
        if plan.strategy == "patch":
            return self._patch_members(job, plan.workers)
        if plan.strategy == "batch_patch":
            parts, groups = [], []
            for (start, stop), members in plan.batch_groups():
                members_parts, opened = self._patch_members(job.sliced(start, stop), members)
                parts += members_parts
                groups += opened
            return parts, groups
        if plan.strategy == "sequence":
            group = self.root.sequence_groups.group(plan.workers)
            return [(w, part, {"sequence": seq}) for w, part, seq in
                    sequence_parallel.split_sequence(job, group, attention)], [group]
        half = len(plan.workers) // 2
        halves = [plan.workers[:half], plan.workers[half:]]
        pairs = [self.root.cfg_groups.pair(c, u) for c, u in zip(*halves)]
        parts, groups = [], []
        for part, members in zip(cfg_parallel.PARTS, halves):           # "cond" on halves[0], "uncond" on halves[1]
            half_job = replace(job, cfg_part=part, exchange=None)
            if plan.strategy == "cfg_patch":
                members_parts, opened = self._patch_members(half_job, members)
            else:
                opened = [self.root.sequence_groups.group(members)]
                members_parts = [(w, half_job, {"sequence": seq})
                                 for w, _, seq in sequence_parallel.split_sequence(half_job, opened[0], attention)]
            parts += [(w, j, {**kwargs, "group": pairs[rank].group})
                      for rank, (w, j, kwargs) in enumerate(members_parts)]
            groups += opened
        return parts, groups + pairs

    def _merge_members(self, plan: SamplePlan, results: list[torch.Tensor]) -> torch.Tensor:
        """Every member of a group ends with its group's latent: rank 0's is kept (batch_patch: each
        group's rank 0, concatenated in batch order)."""
        if plan.strategy != "batch_patch":
            return sequence_parallel.merge_sequence(results)
        firsts, index = [], 0
        for _, members in plan.batch_groups():
            firsts.append(results[index])
            index += len(members)
        return batch_parallel.merge_batch(firsts)

    def _sample_sequence(self, handle: ModelHandle, job, plan: SamplePlan, progress: Progress | None) -> torch.Tensor:
        parts, groups = self._sequence_parts(job, plan)
        futures = [self.root.executor.call(w, "sample", handle, part, **kwargs,
                                           on_event=self._tagged(progress, w, plan.strategy) if i == 0 else None)
                   for i, (w, part, kwargs) in enumerate(parts)]
        outcomes = _wait_all(futures)
        errors = [e for _, e in outcomes if e is not None]
        if not errors:
            return self._merge_members(plan, [r for r, _ in outcomes])
        for group in groups:
            (self.root.cfg_groups if isinstance(group, cfg_parallel.CfgPair) else self.root.sequence_groups).drop(group)
        died = [(w, e) for (w, _, _), (_, e) in zip(parts, outcomes) if isinstance(e, WorkerDied)]
        if not died:
            raise next((e for e in errors if not isinstance(e, WorkerDied)), errors[0])
        retry = self._retry_worker(died[0][0])
        log.warning("%s; retrying the whole job once on worker %s without %s", died[0][1], retry, plan.strategy)
        return self.root.executor.call(retry, "sample", handle, job,
                                       on_event=self._tagged(progress, retry, "single")).result()

    def interrupt(self) -> None:
        self.root.executor.interrupt(self.worker_ids)

    def free(self, unload_models: bool = True) -> None:
        for future in [self.root.executor.call(w, "free", unload_models) for w in self.worker_ids]:
            future.result()

    def describe(self) -> dict[str, Any]:
        return self.root.describe(self.worker_ids)


class Lease:
    """Workers held by one prompt; `engine` runs that prompt's model work on them only."""

    def __init__(self, root: "Engine", worker_ids: list[int]):
        self.worker_ids = list(worker_ids)
        self.engine = EngineScope(root, worker_ids)
        self._root = root
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._root.pool.give(self.worker_ids)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Engine(EngineScope):
    """All workers of one executor, plus leases for running several prompts at once."""

    def __init__(self, executor: Executor, *, parallel: str = "auto", default_device: str | None = None,
                 split_components: bool = True, speeds: dict[int, float] | None = None,
                 cfg_timeout_s: float = 600.0, sequence_attention: str = "auto",
                 explain: Callable[[str], None] | None = None):
        if parallel not in MODES:
            raise ConfigError(f"unknown parallel mode {parallel!r}", where="--parallel",
                              fix=f"choose one of {', '.join(MODES)}")
        self.executor = executor
        self.parallel = parallel
        self.default_device = default_device
        self.split_components = split_components
        specs = list(executor.specs)
        labels = worker_labels([s.device for s in specs])
        self.infos = {s.worker_id: WorkerInfo(s.worker_id, s.device, label, (speeds or {}).get(s.worker_id, 1.0),
                                              (getattr(s, "settings", None) or {}).get("vram_budget"))
                      for s, label in zip(specs, labels)}
        self.explain = explain               # --explain: gets the cost model's table for every sampling job
        self.links: dict[tuple[int, ...], dict[str, Any]] = {}   # link figures per worker set (engine.explain)
        self.pool = WorkerPool(self.infos)
        # a group's store is hosted by its rank-0 worker's node when the executor spans machines (Ray)
        rendezvous = getattr(executor, "rendezvous", None)
        self.cfg_groups = cfg_parallel.CfgGroups(
            executor.call, lambda w: getattr(executor, "restarts", {}).get(w, 0), timeout_s=cfg_timeout_s,
            device_of=lambda w: self.infos[w].device, rendezvous=rendezvous)
        self.sequence_groups = sequence_parallel.SequenceGroups(
            executor.call, lambda w: getattr(executor, "restarts", {}).get(w, 0), timeout_s=cfg_timeout_s,
            device_of=lambda w: self.infos[w].device, rendezvous=rendezvous)
        self.weight_groups = sequence_parallel.SequenceGroups(      # sharded weights / layer split exchanges
            executor.call, lambda w: getattr(executor, "restarts", {}).get(w, 0), timeout_s=cfg_timeout_s,
            device_of=lambda w: self.infos[w].device, rendezvous=rendezvous)
        if sequence_attention not in sequence_parallel.MODES:
            raise ConfigError(f"unknown sequence attention {sequence_attention!r}", where="--sequence-attention",
                              fix=f"choose one of {', '.join(sequence_parallel.MODES)}")
        self.sequence_attention = sequence_attention     # auto: Ulysses when heads >= workers, else ring
        self.last_plan: SamplePlan | None = None
        super().__init__(self, list(self.infos))

    # -- queue parallel --------------------------------------------------------------------------
    def slots(self) -> int:
        """How many prompts the dispatcher should run at once."""
        return len(self.infos) if self.parallel in ("auto", "queue") else 1

    def acquire(self, pending: int = 1, timeout: float | None = None) -> Lease | None:
        """Lease workers for one prompt; blocks until one is free (None after `timeout`).

        `pending` = prompts waiting, this one included. Mode "queue", or "auto" with more than one
        prompt pending: one worker per prompt. Otherwise the prompt gets every free worker, so
        batch and CFG parallel can speed it up. A worker the executor gave up (it kept dying) is
        lent to no prompt any more, as long as another worker is left.
        """
        gone = [w for w in self.infos if self.executor.gone(w)]
        if gone and len(gone) < len(self.infos):     # with none left, prompts fail with the reason instead
            self.pool.retire(gone)
        one_each = self.parallel == "queue" or (self.parallel == "auto" and pending > 1)
        count = 1 if one_each else len(self.infos)
        taken = self.pool.take(count, at_least=1, timeout=timeout)
        return Lease(self, taken) if taken else None

    # -- measurement and reports -------------------------------------------------------------------
    def calibrate(self, seconds: float = 0.3) -> dict[int, float]:
        """Measure relative speeds (fastest = 1.0) on every worker at once, for the planner."""
        futures = {w: self.executor.call(w, "measure_speed", seconds) for w in self.infos}
        rates = {w: f.result() for w, f in futures.items()}
        top = max(rates.values())
        for w, rate in rates.items():
            info = self.infos[w]
            self.infos[w] = WorkerInfo(info.worker_id, info.device, info.label, rate / top, info.memory_free)
        return {w: self.infos[w].speed for w in self.infos}

    def device_names(self) -> list[str]:
        """Names for device combos (loader `device` inputs, Select*Device nodes)."""
        return [info.label for info in self.infos.values()]

    def describe(self, worker_ids: list[int] | None = None) -> dict[str, Any]:
        ids = list(self.infos) if worker_ids is None else list(worker_ids)
        plan = plan_placement([self.infos[w] for w in ids], self.default_device, self.split_components)
        restarts = getattr(self.executor, "restarts", {})
        workers = [{"worker_id": w, "device": self.infos[w].device, "label": self.infos[w].label,
                    "speed": round(self.infos[w].speed, 3), "alive": self.executor.is_alive(w),
                    "busy": self.executor.busy(w), "restarts": restarts.get(w, 0)} for w in ids]
        cluster = {"cluster": self.executor.describe()} if hasattr(self.executor, "describe") else {}
        return {"parallel": self.parallel, "workers": workers, "free_workers": self.pool.free(), **cluster,
                "placement": {c: self.infos[plan.worker_for(c)].label for c in ("unet", "clip", "vae")},
                "last_plan": None if self.last_plan is None else self.last_plan.as_dict()}

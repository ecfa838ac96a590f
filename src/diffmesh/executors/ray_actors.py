"""Ray executor: one Ray actor per device, on one machine or across a Ray cluster.

`diffmesh serve --executor ray [--ray-address ADDR]`: with no address a local Ray instance is started
(and stopped with the server); with one, the executor joins that cluster (`ray start --head` on one
machine, `ray start --address ...` on the others). Each actor runs the same `Worker` class as the
multi-process executor; the engine sees the same seam (`call`, `interrupt`, `restarts`).

- Placement: one placement group, one bundle per worker (`{"CPU": threads}`, plus `{"GPU": 1}` for a
  CUDA worker), strategy SPREAD, so the workers land on different nodes when they can. On a cluster
  with GPUs, `cluster_specs` makes one CUDA worker per GPU in the cluster.
- Calls: a call is a streaming-generator task on the actor; it yields the worker's progress events as
  they happen, then the result or the error as data (`executors.remote`). Actors are threaded
  (`max_concurrency`), so `interrupt` and liveness probes reach an actor during a long call.
- Model files: before a call, every file its model handles name is checked on the actor's node and,
  where missing, sent once through the object store (`executors.ray_files`).
- Faults: an actor that dies mid-call fails that call with `WorkerDied` (the engine runs the work
  again, once) and is restarted by Ray (`max_restarts`); `restarts` counts it so process groups are
  opened anew. A call waits at most `hang_timeout_s` between two messages while the actor does not
  answer a probe; when Ray itself is gone every call fails within `probe_timeout_s` with a message.
- Process groups: `rendezvous(worker)` gives a `tcp://host:port` on that worker's own node, so
  gloo/NCCL groups form among actors on different machines.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
from concurrent.futures import Future
from typing import Any

from diffmesh.errors import ConfigError, WorkerDied
from diffmesh.executors.base import EventCallback, Executor, WorkerSpec
from diffmesh.executors.remote import WorkerStartError, error_from_data, error_to_data

log = logging.getLogger("diffmesh.executors.ray")

DEFAULT_WORKER_CLASS = "diffmesh.executors.worker:Worker"
_DONE = object()


class WorkerActor:
    """The body of one Ray actor: a `Worker` plus this node's model files. Made a Ray actor class in
    `RayExecutor.start`, so importing this module does not need Ray."""

    def __init__(self, spec: WorkerSpec, worker_class: str):
        import torch

        from diffmesh.executors.child import load_class
        from diffmesh.executors.ray_files import NodeFiles

        if spec.threads:
            torch.set_num_interop_threads(1)
        self.spec = spec
        self.label = f"worker {spec.worker_id} ({spec.device}, ray)"
        self.worker = load_class(worker_class)(spec)
        self.files = NodeFiles()

    def info(self) -> dict[str, Any]:
        import ray
        import torch

        return {"pid": os.getpid(), "worker_id": self.spec.worker_id, "device": self.spec.device,
                "threads": torch.get_num_threads(), "node_ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "received_files": list(self.files.received)}

    def interrupt(self) -> None:
        self.worker.interrupt_flag.set()

    def missing_files(self, wanted: dict) -> list[str]:
        return self.files.missing(wanted)

    def receive_file(self, server_path: str, fingerprint, *chunks: bytes) -> str:
        return self.files.receive(server_path, fingerprint, list(chunks))

    def rendezvous(self) -> str:
        """A free TCP port on this node's address, for a process group whose rank 0 is this worker."""
        import socket

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((host, 0))
            return f"tcp://{host}:{sock.getsockname()[1]}"

    def run(self, method: str, args: tuple, kwargs: dict, wants_events: bool):
        """Generator task: ("event", e)... then ("result", value) or ("error", data)."""
        messages: queue.Queue = queue.Queue()
        if wants_events:
            kwargs = dict(kwargs, emit=lambda event: messages.put(("event", event)))
        args, kwargs = self.files.localize(args), self.files.localize(kwargs)

        def call() -> None:
            try:
                messages.put(("result", getattr(self.worker, method)(*args, **kwargs)))
            except BaseException as exc:  # noqa: BLE001 - every failure becomes data for the server
                messages.put(("error", error_to_data(exc, self.label)))
            messages.put(_DONE)

        threading.Thread(target=call, daemon=True, name=f"diffmesh-{method}").start()
        while (message := messages.get()) is not _DONE:
            yield message


class RayExecutor(Executor):
    def __init__(self, specs: list[WorkerSpec], *, address: str | None = None, start_timeout: float = 180.0,
                 worker_class: str = DEFAULT_WORKER_CLASS, max_restarts: int = 5, hang_timeout_s: float = 300.0,
                 probe_timeout_s: float = 30.0, poll_s: float = 2.0, **options: Any):
        self.specs = list(specs)
        self.address = address
        self.start_timeout = start_timeout
        self.worker_class = worker_class
        self.max_restarts = max_restarts
        self.hang_timeout_s = hang_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.poll_s = poll_s
        self.restarts: dict[int, int] = {s.worker_id: 0 for s in self.specs}
        self._actors: dict[int, Any] = {}
        self._info: dict[int, dict] = {}
        self._pending: dict[int, int] = {s.worker_id: 0 for s in self.specs}
        self._dead: set[int] = set()                            # died lately; Ray is restarting them
        self._shipped: set[tuple[int, int, str, str]] = set()   # (worker, restarts, path, sha) known present
        self._lock = threading.Lock()
        self._pg = None
        self._owns_ray = False
        self._closing = False
        self._hashes = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        ray = _import_ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from diffmesh.executors.ray_files import HashCache

        self._hashes = HashCache()
        if not ray.is_initialized():
            needed = sum(s.threads or 1 for s in self.specs)
            # a local instance serves this machine only: keep it on loopback
            local = {} if self.address else {"num_cpus": max(needed, os.cpu_count() or 1),
                                             "_node_ip_address": "127.0.0.1"}
            ray.init(address=self.address, namespace="diffmesh", include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **local)
            self._owns_ray = True
        self.specs = cluster_specs(self.specs, ray.cluster_resources())
        self.restarts = {s.worker_id: 0 for s in self.specs}
        self._pending = {s.worker_id: 0 for s in self.specs}
        bundles = [_bundle(s) for s in self.specs]
        self._pg = placement_group(bundles, strategy="SPREAD", name=f"diffmesh-{secrets.token_hex(4)}")
        try:
            ray.get(self._pg.ready(), timeout=self.start_timeout)
        except Exception as exc:  # noqa: BLE001 - GetTimeoutError and friends
            self.shutdown()
            raise WorkerStartError(
                f"the Ray cluster cannot place {len(bundles)} workers ({bundles}) within {self.start_timeout:.0f} s: "
                f"it has {ray.cluster_resources()}", where="--executor ray",
                fix="add nodes or CPUs/GPUs to the cluster, or ask for fewer workers (--workers)") from exc
        actor_class = ray.remote(WorkerActor)
        for index, spec in enumerate(self.specs):
            bundle = bundles[index]
            self._actors[spec.worker_id] = actor_class.options(
                num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), max_concurrency=4,
                max_restarts=self.max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=index),
            ).remote(_actor_spec(spec), self.worker_class)
        try:
            infos = ray.get([a.info.remote() for a in self._actors.values()], timeout=self.start_timeout)
        except Exception as exc:  # noqa: BLE001 - an actor's constructor failed or timed out
            self.shutdown()
            raise WorkerStartError(f"a Ray worker did not start: {exc}", where="--executor ray",
                                   fix="check the worker's log in the Ray session folder") from exc
        self._info = {info["worker_id"]: info for info in infos}
        log.info("Ray workers: %s", ", ".join(f"{i['worker_id']}@{i['node_ip']} ({i['device']})" for i in infos))

    def shutdown(self, timeout: float = 10.0) -> None:
        self._closing = True
        try:
            ray = _import_ray()
        except ConfigError:
            return
        if not ray.is_initialized():
            return
        for actor in self._actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors.clear()
        if self._pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self._pg)
            except Exception:  # noqa: BLE001
                pass
        if self._owns_ray:
            ray.shutdown()

    # -- calls --------------------------------------------------------------------------------
    def call(self, worker_id: int, method: str, *args: Any, on_event: EventCallback | None = None,
             **kwargs: Any) -> Future:
        future: Future = Future()
        actor = self._actors.get(worker_id)
        if actor is None or self._closing:
            future.set_exception(WorkerDied("no such Ray worker, or the executor shut down",
                                            where=f"worker {worker_id}", fix="see the log"))
            return future
        with self._lock:
            self._pending[worker_id] += 1
        threading.Thread(target=self._drive, args=(worker_id, actor, method, args, kwargs, on_event, future),
                         daemon=True, name=f"diffmesh-ray-call-{worker_id}").start()
        return future

    def _drive(self, worker_id, actor, method, args, kwargs, on_event, future: Future) -> None:
        ray = _import_ray()
        label = f"worker {worker_id} (ray)"
        try:
            self._ship_files(worker_id, actor, args, kwargs)
            stream = actor.run.options(num_returns="streaming").remote(method, args, kwargs, on_event is not None)
            for kind, payload in self._messages(ray, actor, stream, label):
                if kind == "event":
                    if on_event is not None:
                        on_event(payload)
                elif kind == "result":
                    future.set_result(payload)
                    return
                else:
                    future.set_exception(error_from_data(payload))
                    return
            if not future.done():
                future.set_exception(WorkerDied("the call ended without a result", where=label, fix="see the log"))
        except WorkerDied as exc:
            self._note_death(worker_id)
            future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - Ray's own errors reach the engine as one clear error
            if future.done() or self._closing:
                return
            if _actor_died(exc):
                self._note_death(worker_id)
                future.set_exception(WorkerDied(f"the Ray actor died: {type(exc).__name__}", where=label,
                                                fix="the engine runs its work again on a restarted worker"))
            else:
                future.set_exception(exc)
        finally:
            with self._lock:
                self._pending[worker_id] -= 1

    def _messages(self, ray, actor, stream, label: str):
        """The stream's messages; between two, probe the actor so a dead node or Ray fails in bounded time."""
        silent = 0.0
        while True:
            ready, _ = ray.wait([stream], timeout=self.poll_s)
            if not ready:
                silent += self.poll_s
                self._probe(ray, actor, label, silent)
                continue
            try:
                ref = next(stream)
            except StopIteration:
                return
            silent = 0.0
            yield ray.get(ref, timeout=self.probe_timeout_s)

    def _probe(self, ray, actor, label: str, silent: float) -> None:
        try:
            ray.get(actor.info.remote(), timeout=self.probe_timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise WorkerDied(f"the Ray actor does not answer ({type(exc).__name__}) after {silent:.0f} s",
                             where=label, fix="check the Ray cluster (`ray status`); the queue is kept") from exc
        if silent > self.hang_timeout_s:
            raise WorkerDied(f"no progress for {silent:.0f} s", where=label, fix="the call is abandoned")

    def _ship_files(self, worker_id: int, actor, args: tuple, kwargs: dict) -> None:
        """Send the call's model files the actor's node lacks, once per node and restart."""
        ray = _import_ray()
        from diffmesh.executors.ray_files import file_fingerprints, read_chunks

        wanted = file_fingerprints(self._hashes, args, kwargs)
        generation = self.restarts.get(worker_id, 0)
        unknown = {p: fp for p, fp in wanted.items() if (worker_id, generation, p, fp.sha256) not in self._shipped}
        if not unknown:
            return
        missing = ray.get(actor.missing_files.remote(unknown), timeout=self.start_timeout)
        for path in missing:
            fp = unknown[path]
            log.info("sending %s (%.1f MB) to worker %d's node", fp.name, fp.size / 1e6, worker_id)
            chunks = [ray.put(chunk) for chunk in read_chunks(path)]
            ray.get(actor.receive_file.remote(path, fp, *chunks), timeout=max(self.start_timeout, fp.size / 20e6))
        self._shipped.update((worker_id, generation, p, fp.sha256) for p, fp in unknown.items())

    def _note_death(self, worker_id: int) -> None:
        with self._lock:
            self.restarts[worker_id] = self.restarts.get(worker_id, 0) + 1
            self._dead.add(worker_id)

    # -- the rest of the seam -------------------------------------------------------------------
    def interrupt(self, worker_ids: list[int] | None = None) -> None:
        for wid, actor in list(self._actors.items()):
            if worker_ids is None or wid in worker_ids:
                try:
                    actor.interrupt.remote()
                except Exception:  # noqa: BLE001 - a dead actor has nothing to interrupt
                    pass

    def rendezvous(self, worker_id: int) -> str:
        ray = _import_ray()
        return ray.get(self._actors[worker_id].rendezvous.remote(), timeout=self.probe_timeout_s)

    def is_alive(self, worker_id: int) -> bool:
        """Cheap: alive unless it died lately and does not answer a short probe yet (restarting)."""
        if worker_id not in self._dead:
            return worker_id in self._actors
        ray = _import_ray()
        try:
            ray.get(self._actors[worker_id].info.remote(), timeout=1.0)
        except Exception:  # noqa: BLE001
            return False
        self._dead.discard(worker_id)
        return True

    def busy(self, worker_id: int) -> bool:
        return self._pending.get(worker_id, 0) > 0

    def worker_info(self, worker_id: int) -> dict[str, Any]:
        """The actor's current info (pid, node); {} when it does not answer."""
        ray = _import_ray()
        actor = self._actors.get(worker_id)
        if actor is None:
            return {}
        try:
            info = ray.get(actor.info.remote(), timeout=self.probe_timeout_s)
        except Exception:  # noqa: BLE001
            return {}
        self._info[worker_id] = info
        return info

    def pid(self, worker_id: int) -> int | None:
        return self.worker_info(worker_id).get("pid")

    def describe(self) -> dict[str, Any]:
        """Nodes and workers, for /system_stats and `diffmesh doctor`."""
        ray = _import_ray()
        nodes = [{"node_id": n["NodeID"], "address": n["NodeManagerAddress"], "alive": n["Alive"],
                  "resources": n.get("Resources", {})} for n in ray.nodes()]
        workers = [{"worker_id": w, "device": i.get("device"), "node_ip": i.get("node_ip"), "pid": i.get("pid")}
                   for w, i in sorted(self._info.items())]
        return {"backend": "ray", "address": self.address or "local", "nodes": nodes, "workers": workers}


def cluster_specs(specs: list[WorkerSpec], resources: dict) -> list[WorkerSpec]:
    """One CUDA worker per GPU in the cluster when it has GPUs; otherwise the CPU workers asked for."""
    gpus = int(resources.get("GPU", 0))
    if gpus == 0 or not specs:
        return list(specs)
    base = specs[0]
    return [WorkerSpec(worker_id=i, device=f"cuda:{i}", threads=base.threads, settings=dict(base.settings))
            for i in range(gpus)]


def _bundle(spec: WorkerSpec) -> dict[str, float]:
    bundle = {"CPU": float(spec.threads or 1)}
    if spec.device.startswith("cuda"):
        bundle["GPU"] = 1.0
    return bundle


def _actor_spec(spec: WorkerSpec) -> WorkerSpec:
    """Ray shows each GPU actor only its own GPU, as cuda:0."""
    if spec.device.startswith("cuda"):
        return WorkerSpec(spec.worker_id, "cuda:0", spec.threads, dict(spec.settings))
    return spec


def _actor_died(exc: BaseException) -> bool:
    from ray import exceptions

    return isinstance(exc, (exceptions.RayActorError, exceptions.ActorUnavailableError))


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the Ray executor needs Ray", where="--executor ray",
                          fix="pip install 'diffmesh[ray]'") from exc
    return ray

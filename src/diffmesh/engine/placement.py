"""Placement: which worker runs each model component. Plans are plain data.

Default: the UNet on the main device (`--default-device`, else the first worker); with a second
device, text encoders and the VAE on another one (the slowest other worker: they need little
compute, and it keeps the main device's memory for the UNet). A handle's `device` (set by a
loader's device input or a Select*Device node) overrides the plan; a device the machine lacks,
or one held by another running prompt (leases), falls back to the plan with a warning.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

log = logging.getLogger("diffmesh.engine.placement")


@dataclass(frozen=True)
class WorkerInfo:
    """What placement and planning know about a worker (plain data)."""

    worker_id: int
    device: str                  # torch device string, e.g. "cuda:1", "cpu"
    label: str                   # unique user-facing name: "cuda:1", or "cpu:0", "cpu:1" for CPU workers
    speed: float = 1.0           # relative speed (higher is faster)
    memory_free: int | None = None


@dataclass(frozen=True)
class PlacementPlan:
    unet: int
    clip: int
    vae: int

    def worker_for(self, component: str) -> int:
        return getattr(self, component)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def worker_labels(devices: list[str]) -> list[str]:
    """Unique names for workers' devices: a device used by several workers gets its worker index."""
    counts = Counter(devices)
    labels = []
    for index, device in enumerate(devices):
        base = device.split(":")[0] if device.startswith("cpu") else device
        labels.append(f"{base}:{index}" if counts[device] > 1 else device)
    return labels


def resolve_device(request: str | None, workers: Iterable[WorkerInfo]) -> int | None:
    """The worker a device request names, or None when no worker matches.

    Accepts a worker label ("cuda:1", "cpu:1"), a device string ("cpu", "cuda:0"), a bare index
    ("1", meaning "cuda:1" where present, else worker 1) and "worker:N".
    """
    if request in (None, "", "default"):
        return None
    workers = list(workers)
    text = str(request).strip().lower()
    if text.startswith("worker:"):
        text = text.split(":", 1)[1]
        return next((w.worker_id for w in workers if str(w.worker_id) == text), None)
    for key in ("label", "device"):
        match = next((w.worker_id for w in workers if getattr(w, key).lower() == text), None)
        if match is not None:
            return match
    if text.isdigit():
        match = next((w.worker_id for w in workers if w.device == f"cuda:{text}"), None)
        return match if match is not None else next((w.worker_id for w in workers if str(w.worker_id) == text), None)
    return None


def plan_placement(workers: list[WorkerInfo], default_device: str | None = None,
                   split_components: bool = True) -> PlacementPlan:
    """UNet on the main worker; text encoders and VAE on another worker when there is one."""
    if not workers:
        raise ValueError("placement needs at least one worker")
    main = resolve_device(default_device, workers)
    if main is None:
        main = workers[0].worker_id
    others = [w for w in workers if w.worker_id != main]
    if not split_components or not others:
        return PlacementPlan(unet=main, clip=main, vae=main)
    helper = min(others, key=lambda w: (w.speed, -w.worker_id)).worker_id
    return PlacementPlan(unet=main, clip=helper, vae=helper)


def place(handle, plan: PlacementPlan, workers: list[WorkerInfo], others: list[WorkerInfo] = ()) -> int:
    """The worker for `handle`: its device request when one of `workers` (the prompt's) is that
    device, else the plan's choice. `others` are the machine's workers outside this scope (held by
    other prompts): a request naming one of them is not followed, since that worker runs another
    prompt's models; the warning says so."""
    chosen = resolve_device(handle.device, workers)
    if chosen is not None:
        return chosen
    if handle.device not in (None, "", "default"):
        fallback = next(w.label for w in workers if w.worker_id == plan.worker_for(handle.component))
        if resolve_device(handle.device, others) is not None:
            log.warning("%s requests device %r, which another prompt holds now; using this prompt's %s "
                        "(queue fewer prompts at once, or --parallel none, to keep every device for one prompt)",
                        handle.component, handle.device, fallback)
        else:
            log.warning("%s requests device %r, which this machine does not have (workers: %s); using %s",
                        handle.component, handle.device, ", ".join(w.label for w in [*workers, *others]),
                        fallback)
    return plan.worker_for(handle.component)

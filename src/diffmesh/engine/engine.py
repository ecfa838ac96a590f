"""The engine runs model work for nodes: it decides where (placement) and how (parallel
strategy) and calls the executor. Nodes hold handles and call these methods; they never touch
a device.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from diffmesh.executors.base import Executor
from diffmesh.models.handle import ModelHandle

Progress = Callable[[dict], None]


class Engine:
    def __init__(self, executor: Executor, default_worker: int = 0):
        self.executor = executor
        self.default_worker = default_worker

    # Placement: which worker runs a component. The multi-device issue replaces this with a
    # placement plan (UNet on the main device, text encoders and VAE on another).
    def worker_for(self, handle: ModelHandle) -> int:
        return self.default_worker

    def encode_text(self, clip: ModelHandle, text: str) -> list:
        return self.executor.call(self.worker_for(clip), "encode_text", clip, text).result()

    def sample(self, model: ModelHandle, job, progress: Progress | None = None) -> torch.Tensor:
        return self.executor.call(self.worker_for(model), "sample", model, job, on_event=progress).result()

    def vae_decode(self, vae: ModelHandle, samples: torch.Tensor, tiling: dict | None = None) -> torch.Tensor:
        return self.executor.call(self.worker_for(vae), "vae_decode", vae, samples, tiling).result()

    def vae_encode(self, vae: ModelHandle, pixels: torch.Tensor) -> torch.Tensor:
        return self.executor.call(self.worker_for(vae), "vae_encode", vae, pixels).result()

    def interrupt(self) -> None:
        self.executor.interrupt()

    def free(self, unload_models: bool = True) -> None:
        for wid in self.executor.worker_ids():
            self.executor.call(wid, "free", unload_models).result()

    def describe(self) -> dict[str, Any]:
        return {"workers": [s.__dict__ | {} for s in self.executor.specs]}

"""Weight storage and compute dtype of each component, from the flags and the device.

Order of precedence for a component (unet, vae, clip):
  1. the handle's own request (`ModelHandle.dtype`, e.g. a loader node's weight_dtype),
  2. its flag (`--bf16-unet`, `--fp32-vae`, `--fp16-text-enc`, ...),
  3. `--force-fp16` / `--force-fp32`,
  4. the device default (`default_dtype`): fp32 on CPU; on CUDA fp16 (UNet, text encoder) and bf16
     for the VAE where the GPU runs bf16 natively (compute capability >= 8.0), else fp32.

fp8 (`fp8_e4m3fn`, `fp8_e5m2`) is a storage format only: Linear and Conv weights are kept in fp8
and cast to the compute dtype (bf16/fp16 on GPUs, fp32 on CPU) by removable forward hooks just
for the duration of each module's forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from diffmesh.devices import hooks
from diffmesh.errors import ConfigError

CAST_HOOK = "cast"

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
FP8 = frozenset({"fp8_e4m3fn", "fp8_e5m2"})
CASTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class DeviceFacts:
    """What precision support depends on; built from an `Accelerator` or a torch device."""

    kind: str                                 # "cpu" | "cuda" | "mps" | "xpu"
    capability: tuple[int, int] | None = None
    is_hip: bool = False

    @classmethod
    def of(cls, device: torch.device | str) -> "DeviceFacts":
        device = torch.device(device)
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return cls("cuda", torch.cuda.get_device_capability(index), getattr(torch.version, "hip", None) is not None)
        return cls(device.type)


@dataclass(frozen=True)
class Precision:
    storage: torch.dtype
    compute: torch.dtype

    @property
    def is_fp8(self) -> bool:
        return self.storage in (torch.float8_e4m3fn, torch.float8_e5m2)

    def to_dict(self) -> dict[str, str]:
        return {"storage": str(self.storage).replace("torch.", ""), "compute": str(self.compute).replace("torch.", "")}


def unsupported_reason(name: str, facts) -> str | None:
    """Why device `facts` cannot run dtype `name` (None when it can)."""
    if name not in DTYPES:
        return f"unknown dtype {name!r}"
    cap = facts.capability
    if facts.kind == "mps" and name in FP8:
        return "Apple MPS has no fp8 tensors"
    if facts.kind == "cuda" and not facts.is_hip and cap is not None:
        if name == "bf16" and cap < (8, 0):
            return f"bf16 needs compute capability 8.0 (Ampere) or newer; this GPU is {cap[0]}.{cap[1]}"
        if name == "fp16" and cap < (5, 3):
            return f"fp16 needs compute capability 5.3 or newer; this GPU is {cap[0]}.{cap[1]}"
    return None


def check_component_dtype(name: str, facts, flag: str) -> None:
    """Raise `ConfigError` naming `flag` when the device cannot run `name`."""
    reason = unsupported_reason(name, facts)
    if reason:
        device = getattr(facts, "torch_device", facts.kind)
        raise ConfigError(f"{device} cannot run {name}: {reason}", where=flag,
                          fix="drop the flag, or choose fp16/fp32 (fp8 stores weights only where the device has fp8 tensors)")


def default_dtype(component: str | None, facts) -> str:
    """The dtype a component gets on this device when no flag says otherwise."""
    if facts.kind == "cpu":
        return "fp32"
    if facts.kind == "cuda":
        cap = facts.capability or (0, 0)
        if not facts.is_hip and cap < (7, 0):
            return "fp32"
        if component == "vae":
            return "bf16" if facts.is_hip or cap >= (8, 0) else "fp32"
        return "fp16"
    if facts.kind == "mps":
        return "fp32" if component == "vae" else "fp16"
    return "bf16" if component in ("unet", "vae") else "fp16"   # xpu


def fp8_compute_dtype(facts) -> torch.dtype:
    if facts.kind == "cpu":
        return torch.float32
    if facts.kind == "cuda" and (facts.is_hip or (facts.capability or (0, 0)) >= (8, 0)):
        return torch.bfloat16
    return torch.float16


def resolve_precision(component: str | None, facts, settings: dict | None = None,
                      requested: str | None = None) -> Precision:
    """Storage and compute dtype of `component` (see the module docstring for the order)."""
    settings = settings or {}
    name = requested if requested not in (None, "default") else None
    name = name or (settings.get("dtypes") or {}).get(component or "") or settings.get("force_dtype")
    name = name or default_dtype(component, facts)
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r} for {component}", where=f"{component} dtype",
                          fix=f"use one of: {', '.join(DTYPES)}")
    if name in FP8:
        return Precision(DTYPES[name], fp8_compute_dtype(facts))
    return Precision(DTYPES[name], DTYPES[name])


def store_in(module: nn.Module, storage: torch.dtype) -> int:
    """Convert Linear/Conv weights of `module` to `storage` (e.g. fp8); returns how many."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, CASTABLE) and sub.weight is not None and sub.weight.dtype != storage:
            sub._parameters["weight"] = nn.Parameter(sub.weight.detach().to(storage), requires_grad=False)
            count += 1
    return count


def attach_cast_hooks(module: nn.Module, compute: torch.dtype) -> int:
    """Hooks that give each Linear/Conv a `compute`-dtype weight during its forward only.

    A layer with a `scale_weight` buffer ("scaled fp8" files: one scale per tensor) gets
    `weight.to(compute) * scale`. Layers that already carry a cast hook are left as they are."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, CASTABLE) and sub.weight is not None and sub.weight.dtype != compute \
                and CAST_HOOK not in hooks.attached(sub):
            stash: dict[str, nn.Parameter] = {}

            def pre(mod, args, stash=stash):
                if "weight" in stash:  # a forward raised after the last cast: put the stored weight back first
                    mod._parameters["weight"] = stash.pop("weight")
                stored = mod._parameters["weight"]
                stash["weight"] = stored
                weight = stored.detach().to(compute)
                scale = mod._buffers.get("scale_weight")
                if scale is not None:
                    weight = weight * scale.to(compute)
                mod._parameters["weight"] = nn.Parameter(weight, requires_grad=False)

            def post(mod, args, output, stash=stash):
                mod._parameters["weight"] = stash.pop("weight")

            hooks.attach(sub, CAST_HOOK, pre, post, outer=False)
            count += 1
    return count


def detach_cast_hooks(module: nn.Module) -> int:
    return hooks.detach_all(module, CAST_HOOK)

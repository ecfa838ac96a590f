"""Device, memory and precision flags: one typed config object, validated once.

`add_device_arguments(parser)` adds the flags (ComfyUI's names, see docs/devices.md);
`DeviceConfig.from_args(ns)` and `DeviceConfig.from_dict(data)` (the config-file form) build and
validate a `DeviceConfig`; `DeviceConfig.worker_specs()` says which workers to start, one per
device, each with the plain-data `settings` dict its `MemoryManager` reads.

Settings keys (`WorkerSpec.settings`, read by `diffmesh.devices.memory.MemoryManager`):

    vram_mode      "highvram" | "normalvram" | "lowvram" | "novram": start mode of every model
    vram_budget    int bytes or None: imposed device budget (None: total minus reserve; CPU: no limit)
    reserve_vram   int bytes: memory left free on the device for the OS and other programs
    smart_memory   bool: keep idle models loaded until memory is needed (False: offload after use)
    gpu_only       bool: keep every model (text encoders, VAE too) resident on the device
    dtypes         {"unet": name|None, "vae": name|None, "clip": name|None}: weight dtype per component
    force_dtype    "fp16" | "fp32" | None: global precision applied where no component flag is given
    cpu_vae        bool: the engine places the VAE on a CPU worker (read by placement, not the manager)

Nothing here probes a device unless a method that needs device facts is called.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Any

from diffmesh.errors import ConfigError
from diffmesh.executors.base import WorkerSpec

VRAM_MODES = ("highvram", "normalvram", "lowvram", "novram")
UNET_DTYPES = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")
VAE_DTYPES = ("fp32", "fp16", "bf16")
TEXT_ENC_DTYPES = ("fp32", "fp16", "bf16")
GIB = 1024 ** 3


def _f(default: Any, flag: str, help: str) -> Any:
    return field(default=default, metadata={"flag": flag, "help": help})


@dataclass
class DeviceConfig:
    """Which devices run work, how their memory is used, and the precision of each component."""

    cpu: bool = _f(False, "--cpu", "run everything on CPU workers (default when no GPU is found)")
    cuda_devices: tuple[int, ...] | str | None = _f(None, "--cuda-device", "CUDA device ids to use (`0,1` or `all`); default: all")
    default_device: int | None = _f(None, "--default-device", "CUDA device id that becomes worker 0 (the main device)")
    workers: int = _f(1, "--workers", "number of CPU workers (each stands in for one GPU)")
    threads_per_worker: int | None = _f(None, "--threads-per-worker", "torch threads per CPU worker; default: cores / workers")
    vram_mode: str = _f("normalvram", "--normalvram", "start memory mode of every model: highvram|normalvram|lowvram|novram")
    gpu_only: bool = _f(False, "--gpu-only", "keep every model, text encoders and VAE included, resident on the GPU")
    reserve_vram_gb: float | None = _f(None, "--reserve-vram", "GB of device memory left free for the OS and other programs")
    vram_budget_gb: float | None = _f(None, "--vram-budget", "GB of device memory diffmesh may use (imposed budget; CPU: no limit)")
    unet_dtype: str | None = _f(None, "--fp16-unet", "UNet weight dtype: fp32|fp16|bf16|fp8_e4m3fn|fp8_e5m2 (fp8 computes wider)")
    vae_dtype: str | None = _f(None, "--fp16-vae", "VAE dtype: fp32|fp16|bf16")
    text_enc_dtype: str | None = _f(None, "--fp16-text-enc", "text encoder dtype: fp32|fp16|bf16")
    cpu_vae: bool = _f(False, "--cpu-vae", "run the VAE on the CPU")
    force_dtype: str | None = _f(None, "--force-fp16", "global precision fp16|fp32 for components without their own flag")
    smart_memory: bool = _f(True, "--disable-smart-memory", "keep idle models loaded until memory is needed")
    cache_lru: int | None = _f(None, "--cache-lru", "graph output cache: keep the N most recent node results")
    cache_none: bool = _f(False, "--cache-none", "graph output cache: keep nothing (re-run every node)")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_args(cls, ns: argparse.Namespace, available: list | None = None) -> "DeviceConfig":
        """Build from parsed flags; raises `ConfigError` naming the flag on conflicts and bad values.

        `available` is the list of `diffmesh.devices.discovery.Accelerator` to validate against;
        None discovers them (only when a GPU flag needs it)."""
        get = lambda name, default=None: getattr(ns, name, default)  # noqa: E731
        data: dict[str, Any] = {
            "cpu": bool(get("cpu", False)), "workers": 1 if get("workers") is None else get("workers"),
            "threads_per_worker": get("threads_per_worker"), "default_device": get("default_device"),
            "gpu_only": bool(get("gpu_only", False)), "cpu_vae": bool(get("cpu_vae", False)),
            "reserve_vram_gb": get("reserve_vram"), "vram_budget_gb": get("vram_budget"),
            "smart_memory": not get("disable_smart_memory", False),
            "cache_lru": get("cache_lru"), "cache_none": bool(get("cache_none", False)),
        }
        if get("cuda_device") is not None:
            data["cuda_devices"] = _parse_device_list(get("cuda_device"))
        data["vram_mode"] = _one_of(ns, [(f"--{m}", m) for m in VRAM_MODES], "normalvram", "memory mode")
        data["unet_dtype"] = _one_of(ns, [(f"--{d}-unet", d) for d in UNET_DTYPES], None, "UNet precision")
        data["vae_dtype"] = _one_of(ns, [(f"--{d}-vae", d) for d in VAE_DTYPES], None, "VAE precision")
        data["text_enc_dtype"] = _one_of(ns, [(f"--{d}-text-enc", d) for d in TEXT_ENC_DTYPES], None,
                                         "text encoder precision")
        data["force_dtype"] = _one_of(ns, [("--force-fp16", "fp16"), ("--force-fp32", "fp32")], None, "global precision")
        config = cls(**data)
        config.validate(available)
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any], available: list | None = None) -> "DeviceConfig":
        """The config-file form: keys are field names (`vram_budget_gb: 4`, `unet_dtype: bf16`, ...)."""
        if not isinstance(data, dict):
            raise ConfigError("device config must be a mapping of field names to values", where="device config",
                              fix=f"use keys from: {', '.join(f.name for f in fields(cls))}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown device config key {key!r}", where="device config",
                                  fix=f"use one of: {', '.join(sorted(known))}")
        values = dict(data)
        if isinstance(values.get("cuda_devices"), (str, int)):
            values["cuda_devices"] = _parse_device_list(str(values["cuda_devices"]))
        elif isinstance(values.get("cuda_devices"), list):
            values["cuda_devices"] = tuple(values["cuda_devices"])
        config = cls(**values)
        config.validate(available)
        return config

    @classmethod
    def help_lines(cls) -> dict[str, str]:
        """Field name -> 'flag: help', e.g. for docs and the config-file reference."""
        return {f.name: f"{f.metadata['flag']}: {f.metadata['help']}" for f in fields(cls)}

    # -- validation ------------------------------------------------------------------------------
    def validate(self, available: list | None = None) -> None:
        """Check types, ranges, conflicts, device ids and device precision support."""
        self._check_values()
        if self.cpu and self.cuda_devices is not None:
            raise ConfigError("--cpu and --cuda-device conflict", where="--cpu",
                              fix="drop --cpu to use GPUs, or drop --cuda-device to use CPU workers")
        if self.cpu and self.default_device is not None:
            raise ConfigError("--default-device selects a GPU but --cpu was given", where="--default-device",
                              fix="drop one of the two flags")
        if self.cpu and self.gpu_only:
            raise ConfigError("--cpu and --gpu-only conflict", where="--gpu-only", fix="drop one of the two flags")
        if self.cache_none and self.cache_lru is not None:
            raise ConfigError("--cache-none and --cache-lru conflict", where="--cache-lru", fix="drop one of the two flags")
        needs_gpu_facts = not self.cpu
        if needs_gpu_facts:
            if available is None:
                from diffmesh.devices.discovery import list_accelerators

                available = list_accelerators()
            self._check_devices(available)

    def _check_values(self) -> None:
        checks = [("workers", "--workers", self.workers, 1), ("threads_per_worker", "--threads-per-worker",
                                                               self.threads_per_worker, 1),
                  ("cache_lru", "--cache-lru", self.cache_lru, 0)]
        for _, flag, value, low in checks:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}", where=flag)
        for flag, value in (("--reserve-vram", self.reserve_vram_gb), ("--vram-budget", self.vram_budget_gb)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"{flag} must be a number of GB >= 0, got {value!r}", where=flag)
        if self.vram_budget_gb == 0:
            raise ConfigError("--vram-budget 0 leaves no memory for any model", where="--vram-budget",
                              fix="give a positive number of GB, or use --novram to stream every block")
        for flag, value, allowed in (("--normalvram", self.vram_mode, VRAM_MODES),
                                     ("--fp16-unet", self.unet_dtype, UNET_DTYPES + (None,)),
                                     ("--fp16-vae", self.vae_dtype, VAE_DTYPES + (None,)),
                                     ("--fp16-text-enc", self.text_enc_dtype, TEXT_ENC_DTYPES + (None,)),
                                     ("--force-fp16", self.force_dtype, ("fp16", "fp32", None))):
            if value not in allowed:
                raise ConfigError(f"invalid value {value!r}", where=flag,
                                  fix=f"use one of: {', '.join(str(a) for a in allowed if a)}")
        if isinstance(self.cuda_devices, str) and self.cuda_devices != "all":
            raise ConfigError(f"invalid device list {self.cuda_devices!r}", where="--cuda-device",
                              fix="give ids like `0,1` or `all`")
        if isinstance(self.cuda_devices, tuple) and any(not isinstance(i, int) or i < 0 for i in self.cuda_devices):
            raise ConfigError(f"device ids must be integers >= 0, got {self.cuda_devices!r}", where="--cuda-device")

    def _check_devices(self, available: list) -> None:
        from diffmesh.devices.precision import check_component_dtype

        cuda_ids = [a.index for a in available if a.kind == "cuda"]
        if self.cuda_devices is not None or self.default_device is not None:
            flag = "--cuda-device" if self.cuda_devices is not None else "--default-device"
            if not cuda_ids:
                raise ConfigError("no CUDA device was found", where=flag,
                                  fix="drop the flag, or use --cpu (add --workers N for N CPU workers)")
            listed = self._listed_ids()
            wanted = list(listed) + ([self.default_device] if self.default_device is not None else [])
            for index in wanted:
                if index not in cuda_ids:
                    which = "--default-device" if index == self.default_device and index not in listed else flag
                    raise ConfigError(f"unknown CUDA device id {index}", where=which,
                                      fix=f"use one of the ids found: {', '.join(map(str, cuda_ids))}")
            if listed and self.default_device is not None and self.default_device not in listed:
                raise ConfigError(f"--default-device {self.default_device} is not in --cuda-device "
                                  f"{','.join(map(str, listed))}", where="--default-device",
                                  fix="pick one of the listed devices")
        accelerators = self._selected(available)
        if accelerators and self.workers != 1:
            raise ConfigError("--workers counts CPU workers, but GPUs were found", where="--workers",
                              fix="add --cpu to use CPU workers, or use --cuda-device to choose GPUs")
        for acc in accelerators:
            for component, flag_suffix, name in (("unet", "-unet", self.unet_dtype), ("vae", "-vae", self.vae_dtype),
                                                 ("clip", "-text-enc", self.text_enc_dtype)):
                if name:
                    check_component_dtype(name, acc, f"--{name}{flag_suffix}")
            if self.force_dtype:
                check_component_dtype(self.force_dtype, acc, f"--force-{self.force_dtype}")

    def _listed_ids(self) -> tuple[int, ...]:
        """Ids given to --cuda-device; () when it was not given or was `all`."""
        return self.cuda_devices if isinstance(self.cuda_devices, tuple) else ()

    def _selected(self, available: list) -> list:
        """The accelerators this config uses, main device first ([] means CPU workers)."""
        if self.cpu:
            return []
        cuda = [a for a in available if a.kind == "cuda"]
        if cuda:
            ids = list(self._listed_ids()) or [a.index for a in cuda]
            if self.default_device is not None:
                ids = [self.default_device] + [i for i in ids if i != self.default_device]
            by_id = {a.index: a for a in cuda}
            return [by_id[i] for i in ids if i in by_id]
        others = [a for a in available if a.kind in ("mps", "xpu")]
        return others[:1]

    # -- outputs -----------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The plain-data dict every worker's `MemoryManager` reads (keys: see the module docstring)."""
        return {
            "vram_mode": "highvram" if self.gpu_only and self.vram_mode == "normalvram" else self.vram_mode,
            "vram_budget": int(self.vram_budget_gb * GIB) if self.vram_budget_gb is not None else None,
            "reserve_vram": int(self.reserve_vram_gb * GIB) if self.reserve_vram_gb is not None else None,
            "smart_memory": self.smart_memory,
            "gpu_only": self.gpu_only,
            "dtypes": {"unet": self.unet_dtype, "vae": self.vae_dtype, "clip": self.text_enc_dtype},
            "force_dtype": self.force_dtype,
            "cpu_vae": self.cpu_vae,
        }

    def worker_specs(self, available: list | None = None) -> list[WorkerSpec]:
        """One `WorkerSpec` per device; worker 0 is the main device (`--default-device`)."""
        accelerators = []
        if not self.cpu:
            if available is None:
                from diffmesh.devices.discovery import list_accelerators

                available = list_accelerators()
            accelerators = self._selected(available)
        settings = self.settings()
        if accelerators:
            return [WorkerSpec(worker_id=i, device=acc.torch_device, threads=None, settings=dict(settings))
                    for i, acc in enumerate(accelerators)]
        threads = self.threads_per_worker or max(1, (os.cpu_count() or 1) // self.workers)
        if self.workers == 1 and self.threads_per_worker is None:
            threads = None  # one worker: torch's own default (all cores)
        return [WorkerSpec(worker_id=i, device="cpu", threads=threads, settings=dict(settings))
                for i in range(self.workers)]


def _parse_device_list(text: str) -> tuple[int, ...] | str:
    """`0,1` -> (0, 1); `all` -> "all" (every device)."""
    text = str(text).strip()
    if text.lower() == "all":
        return "all"
    try:
        ids = tuple(int(part) for part in text.split(",") if part.strip() != "")
    except ValueError:
        raise ConfigError(f"invalid device list {text!r}", where="--cuda-device",
                          fix="give ids separated by commas (`0,1`) or `all`") from None
    if not ids:
        raise ConfigError("empty device list", where="--cuda-device", fix="give ids like `0,1` or `all`")
    return ids


def _one_of(ns: argparse.Namespace, options: list[tuple[str, str]], default: Any, what: str) -> Any:
    """The value of the one flag set among `options`; two set -> ConfigError naming both."""
    given = [(flag, value) for flag, value in options if getattr(ns, _dest(flag), False)]
    if len(given) > 1:
        flags = " and ".join(flag for flag, _ in given)
        raise ConfigError(f"{flags} conflict: choose one {what}", where=given[1][0],
                          fix=f"keep only one of {', '.join(flag for flag, _ in options)}")
    return given[0][1] if given else default


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the device, memory, precision and cache flags (semantics: docs/devices.md)."""
    g = parser.add_argument_group("devices")
    g.add_argument("--cpu", action="store_true", help="run everything on CPU workers")
    g.add_argument("--cuda-device", metavar="LIST", default=None, help="CUDA device ids to use: `0,1` or `all`")
    g.add_argument("--default-device", metavar="N", type=int, default=None, help="CUDA device that becomes the main device")
    g.add_argument("--workers", metavar="N", type=int, default=None, help="number of CPU workers (stand-ins for GPUs)")
    g.add_argument("--threads-per-worker", metavar="N", type=int, default=None,
                   help="torch threads per CPU worker (default: cores / workers)")
    m = parser.add_argument_group("memory")
    m.add_argument("--gpu-only", action="store_true", help="keep every model, text encoders and VAE too, on the GPU")
    m.add_argument("--highvram", action="store_true", help="keep models resident on the device after use")
    m.add_argument("--normalvram", action="store_true", help="offload idle models to CPU memory when room is needed (default)")
    m.add_argument("--lowvram", action="store_true", help="load as many blocks as fit, stream the rest from CPU memory")
    m.add_argument("--novram", action="store_true", help="stream every block from CPU memory")
    m.add_argument("--reserve-vram", metavar="GB", type=float, default=None, help="device memory left free for others")
    m.add_argument("--vram-budget", metavar="GB", type=float, default=None, help="device memory diffmesh may use")
    m.add_argument("--disable-smart-memory", action="store_true", help="offload models to CPU memory after each use")
    p = parser.add_argument_group("precision")
    for d in UNET_DTYPES:
        p.add_argument(f"--{d}-unet", action="store_true", help=f"UNet weights in {d}")
    for d in VAE_DTYPES:
        p.add_argument(f"--{d}-vae", action="store_true", help=f"VAE in {d}")
    p.add_argument("--cpu-vae", action="store_true", help="run the VAE on the CPU")
    for d in TEXT_ENC_DTYPES:
        p.add_argument(f"--{d}-text-enc", action="store_true", help=f"text encoder in {d}")
    p.add_argument("--force-fp16", action="store_true", help="fp16 for every component without its own flag")
    p.add_argument("--force-fp32", action="store_true", help="fp32 for every component without its own flag")
    c = parser.add_argument_group("cache")
    c.add_argument("--cache-lru", metavar="N", type=int, default=None, help="keep the N most recent node results")
    c.add_argument("--cache-none", action="store_true", help="cache no node results")

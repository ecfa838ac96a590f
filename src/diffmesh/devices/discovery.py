"""What devices this machine has, behind one interface.

`list_accelerators()` asks torch only (cheap; used to validate flags): CUDA devices (NVIDIA, and
AMD through ROCm builds where `torch.version.hip` is set), Apple MPS and Intel XPU.
`cpu_info()` describes the CPU (name, cores, RAM via psutil, bf16/AMX support).
`nvml_report()` adds what only the driver knows (memory in use, utilization, temperature, power,
NVLink) when `nvidia-ml-py` is importable, and fails soft (a reason string) when it or the
driver library is missing. `discover()` gathers all of it into a `SystemReport`.

Nothing is probed at import time; every function probes when called.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Accelerator:
    """One non-CPU torch device. `capability` is CUDA's (major, minor); None elsewhere."""

    kind: str                                  # "cuda" | "mps" | "xpu"
    index: int
    name: str
    total_memory: int | None = None            # bytes
    capability: tuple[int, int] | None = None
    is_hip: bool = False                       # an AMD GPU through ROCm (torch calls it "cuda")
    multiprocessors: int | None = None

    @property
    def torch_device(self) -> str:
        return "mps" if self.kind == "mps" else f"{self.kind}:{self.index}"


@dataclass(frozen=True)
class CpuInfo:
    name: str
    physical_cores: int | None
    logical_cores: int | None
    ram_total: int
    ram_available: int
    bf16: bool          # avx512_bf16 / amx_bf16 / arm bf16: bf16 matmuls run natively
    amx: bool
    torch_threads: int


@dataclass
class NvmlDevice:
    index: int
    name: str
    memory_total: int
    memory_used: int
    utilization_gpu: int | None = None         # percent
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    nvlink_active: int = 0                     # number of active NVLink links
    pci_bus_id: str | None = None


@dataclass
class NvmlReport:
    available: bool
    reason: str | None = None                  # why not, when not available
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    devices: list[NvmlDevice] = field(default_factory=list)


@dataclass
class SystemReport:
    torch_version: str
    cuda_version: str | None
    hip_version: str | None
    cpu: CpuInfo
    accelerators: list[Accelerator]
    nvml: NvmlReport

    @property
    def has_gpu(self) -> bool:
        return bool(self.accelerators)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_accelerators() -> list[Accelerator]:
    """Every CUDA/ROCm, MPS and XPU device torch can use, in torch's index order."""
    found: list[Accelerator] = []
    if torch.cuda.is_available():
        hip = getattr(torch.version, "hip", None) is not None
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(Accelerator("cuda", index, props.name, int(props.total_memory), (props.major, props.minor),
                                     hip, getattr(props, "multi_processor_count", None)))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append(Accelerator("mps", 0, "Apple MPS", _mps_memory()))
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        for index in range(xpu.device_count()):
            props = xpu.get_device_properties(index)
            found.append(Accelerator("xpu", index, props.name, int(getattr(props, "total_memory", 0)) or None))
    return found


def _mps_memory() -> int | None:
    try:
        return int(torch.mps.recommended_max_memory())
    except (AttributeError, RuntimeError):
        return None


def cpu_info() -> CpuInfo:
    """Name, cores, RAM and bf16 support of this machine's CPU."""
    import psutil

    flags = _cpu_flags()
    memory = psutil.virtual_memory()
    return CpuInfo(name=_cpu_name(), physical_cores=psutil.cpu_count(logical=False),
                   logical_cores=psutil.cpu_count(logical=True), ram_total=int(memory.total),
                   ram_available=int(memory.available),
                   bf16=bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}), amx=bool(flags & {"amx_bf16", "amx_tile"}),
                   torch_threads=torch.get_num_threads())


def _read_cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def _cpu_name() -> str:
    for line in _read_cpuinfo():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_flags() -> set[str]:
    for line in _read_cpuinfo():
        if line.startswith("flags") or line.startswith("Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def nvml_report() -> NvmlReport:
    """Driver-side facts through NVML; `available=False` with a reason when it cannot be used."""
    try:
        import pynvml
    except ImportError:
        return NvmlReport(False, "nvidia-ml-py is not installed (pip install 'diffmesh[nvml]')")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return NvmlReport(False, f"NVML unavailable: {exc} ({type(exc).__name__})")
    try:
        report = NvmlReport(True, driver_version=_text(pynvml.nvmlSystemGetDriverVersion()))
        cuda = _soft(pynvml.nvmlSystemGetCudaDriverVersion)
        if cuda:
            report.cuda_driver_version = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        for index in range(pynvml.nvmlDeviceGetCount()):
            report.devices.append(_nvml_device(pynvml, index))
        return report
    finally:
        _soft(pynvml.nvmlShutdown)


def _nvml_device(pynvml, index: int) -> NvmlDevice:
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    util = _soft(pynvml.nvmlDeviceGetUtilizationRates, h)
    power = _soft(pynvml.nvmlDeviceGetPowerUsage, h)
    limit = _soft(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
    pci = _soft(pynvml.nvmlDeviceGetPciInfo, h)
    links = 0
    for link in range(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18)):
        state = _soft(pynvml.nvmlDeviceGetNvLinkState, h, link)
        if state is None:
            break
        links += int(state == getattr(pynvml, "NVML_FEATURE_ENABLED", 1))
    return NvmlDevice(index=index, name=_text(pynvml.nvmlDeviceGetName(h)), memory_total=int(mem.total),
                      memory_used=int(mem.used), utilization_gpu=getattr(util, "gpu", None),
                      temperature_c=_soft(pynvml.nvmlDeviceGetTemperature, h, getattr(pynvml, "NVML_TEMPERATURE_GPU", 0)),
                      power_w=power / 1000 if power is not None else None,
                      power_limit_w=limit / 1000 if limit is not None else None, nvlink_active=links,
                      pci_bus_id=_text(pci.busId) if pci is not None else None)


def _soft(fn, *args):
    """Call an NVML query that a device may not support; None when it does not."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover(with_nvml: bool = True) -> SystemReport:
    """Everything above in one report (no bandwidth measurement: see `topology.measure_bandwidth`)."""
    return SystemReport(torch_version=torch.__version__, cuda_version=torch.version.cuda,
                        hip_version=getattr(torch.version, "hip", None), cpu=cpu_info(),
                        accelerators=list_accelerators(),
                        nvml=nvml_report() if with_nvml else NvmlReport(False, "not queried"))


def visible_devices_env() -> str | None:
    """CUDA_VISIBLE_DEVICES as the process sees it (doctor shows it: it renumbers devices)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")

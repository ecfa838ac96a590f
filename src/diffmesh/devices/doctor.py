"""`diffmesh doctor`: what this machine has, how fast its links are, and which settings fit.

`examine(measure=True)` gathers a `Diagnosis` (devices, versions, NVML facts, peer matrix, measured
copy bandwidth, advice); `format_text(d)` renders it for people, `d.to_dict()` for `--json`.
Advice is plain data: a topic, the flags to use, and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from diffmesh.devices.discovery import SystemReport, discover, visible_devices_env
from diffmesh.devices.topology import Bandwidth, format_matrix, measure_links, peer_matrix

GIB = 1024 ** 3


@dataclass
class Advice:
    topic: str          # "devices" | "memory" | "precision" | "parallel"
    flags: str          # what to pass ("" when the default is right)
    why: str


@dataclass
class Diagnosis:
    system: SystemReport
    topology: dict[str, dict[str, str]]
    bandwidth: list[Bandwidth]
    advice: list[Advice] = field(default_factory=list)
    cuda_visible_devices: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"has_gpu": self.system.has_gpu, "system": self.system.to_dict(), "topology": self.topology,
                "bandwidth": [b.to_dict() for b in self.bandwidth], "advice": [asdict(a) for a in self.advice],
                "cuda_visible_devices": self.cuda_visible_devices}


def examine(measure: bool = True, nbytes: int = 64 * 1024 ** 2) -> Diagnosis:
    system = discover()
    matrix = peer_matrix(system.accelerators, system.nvml.devices)
    links = measure_links(system.accelerators, nbytes) if measure else []
    diagnosis = Diagnosis(system, matrix, links, cuda_visible_devices=visible_devices_env())
    diagnosis.advice = advise(system, matrix, links)
    return diagnosis


def advise(system: SystemReport, matrix: dict, links: list[Bandwidth]) -> list[Advice]:
    if not system.accelerators:
        return _cpu_advice(system, links)
    return _gpu_advice(system, matrix, links)


def _cpu_advice(system: SystemReport, links: list[Bandwidth]) -> list[Advice]:
    cpu = system.cpu
    cores = cpu.physical_cores or cpu.logical_cores or 1
    workers = max(1, cores)
    advice = [Advice("devices", f"--cpu --workers {workers} --threads-per-worker 1" if workers > 1 else "--cpu",
                     f"no GPU: diffmesh runs CPU workers. {cores} cores -> {workers} one-thread workers; one-thread "
                     "workers are steadier than one multi-thread process when other programs are busy. For a single "
                     "image with nothing else running, `--cpu` (one worker, all cores) has the lowest latency.")]
    ram_gib = cpu.ram_total / GIB
    advice.append(Advice("memory", "", f"{ram_gib:.1f} GiB RAM and no device budget: models stay in memory (the VRAM "
                         "modes only matter with --vram-budget). Full SD1.5 in fp32 needs about 4 GiB per worker, "
                         "SDXL about 10 GiB; use fewer workers if RAM is short."))
    if cpu.bf16:
        why = ("this CPU runs bf16 natively ({}): --bf16-unet is about 2-3x faster per step; it changes the final "
               "latent by about 4e-3 relative (fp32, the default, is exact)").format("AMX" if cpu.amx else "avx512_bf16")
        advice.append(Advice("precision", "--bf16-unet", why))
    else:
        advice.append(Advice("precision", "", "fp32 (the default on CPU): this CPU has no native bf16, and fp16 is slow on CPUs"))
    par = ("queue/batch/CFG parallel over the CPU workers give about 1.2x the throughput of one 2-thread "
           "process; layer split does not pay on one CPU (the link is memory itself)") if workers > 1 else \
        "one core: no parallel strategy helps"
    advice.append(Advice("parallel", "", par))
    return advice


def _gpu_advice(system: SystemReport, matrix: dict, links: list[Bandwidth]) -> list[Advice]:
    gpus = system.accelerators
    advice: list[Advice] = []
    smallest = min((g.total_memory or 0) for g in gpus) / GIB
    mode, why = _vram_mode_for(smallest)
    advice.append(Advice("memory", mode, why))
    prec = []
    for g in gpus:
        cap = g.capability or (0, 0)
        if g.kind == "cuda" and not g.is_hip and cap < (7, 0):
            prec.append(f"{g.torch_device} (cc {cap[0]}.{cap[1]}): fp32 by default; fp16 is slow or unsupported there")
        elif g.kind == "cuda" and not g.is_hip and cap < (8, 0):
            prec.append(f"{g.torch_device} (cc {cap[0]}.{cap[1]}): fp16 UNet and text encoder, fp32 VAE; no bf16")
        else:
            prec.append(f"{g.torch_device}: fp16 UNet and text encoder, bf16 VAE (defaults); "
                        "--fp8_e4m3fn-unet halves UNet memory at a small quality cost")
    advice.append(Advice("precision", "", "; ".join(prec)))
    advice.append(Advice("parallel", *_parallel_for(gpus, matrix, links)))
    return advice


def _vram_mode_for(gib: float) -> tuple[str, str]:
    if gib >= 16:
        return "--highvram", f"{gib:.0f} GiB per device: SD1.5 and SDXL (about 7 GiB in fp16) stay resident"
    if gib >= 8:
        return "", f"{gib:.0f} GiB per device: normalvram (default) keeps the model in use resident, others offload"
    if gib >= 4:
        return "--lowvram", f"{gib:.0f} GiB per device: SDXL does not fit whole; stream blocks that do not fit"
    return "--novram", f"{gib:.1f} GiB per device: stream every block from CPU memory"


def _parallel_for(gpus: list, matrix: dict, links: list[Bandwidth]) -> tuple[str, str]:
    if len(gpus) == 1:
        return "", "one device: no parallel strategy; add --cpu workers only for queue throughput"
    kinds = {g.name for g in gpus}
    sizes = [g.total_memory or 0 for g in gpus]
    cells = [v for row in matrix.values() for v in row.values() if v != "X"]
    fast = cells and all(v.startswith("NV") or v == "P2P" for v in cells)
    d2d = [b.gb_per_s for b in links if b.src != "cpu" and b.dst != "cpu"]
    link = f"measured device-to-device {min(d2d):.1f} GB/s" if d2d else "device links not measured"
    if len(kinds) > 1 or max(sizes) > 1.5 * min(sizes):
        return ("--parallel placement",
                f"different devices ({', '.join(sorted(kinds))}): put the UNet on the largest, text encoders and VAE "
                f"on the others; queue parallel shares work by measured speed; {link}")
    if fast:
        return ("--parallel cfg", f"{len(gpus)} matching devices with peer links ({link}): CFG parallel halves "
                "single-image latency at cfg > 1; batch/queue parallel for throughput")
    return ("--parallel batch", f"{len(gpus)} matching devices without peer access ({link}, copies go through the "
            "host): prefer queue/batch parallel, which exchange little per step")


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def format_text(d: Diagnosis) -> str:
    s = d.system
    lines = [f"torch {s.torch_version}  CUDA {s.cuda_version or '-'}  ROCm {s.hip_version or '-'}"]
    if s.nvml.available:
        lines.append(f"driver {s.nvml.driver_version}  (CUDA driver {s.nvml.cuda_driver_version})")
    else:
        lines.append(f"NVML: {s.nvml.reason}")
    if d.cuda_visible_devices is not None:
        lines.append(f"CUDA_VISIBLE_DEVICES={d.cuda_visible_devices} (device ids below are renumbered)")
    lines.append("")
    if not s.accelerators:
        build = "a CPU-only torch build" if s.cuda_version is None and s.hip_version is None else "no usable GPU driver"
        lines.append(f"GPUs: none found ({build}). diffmesh runs on the CPU.")
    nvml = {n.index: n for n in s.nvml.devices}
    for g in s.accelerators:
        cap = f"  compute {g.capability[0]}.{g.capability[1]}" if g.capability else ""
        extra = ""
        n = nvml.get(g.index) if g.kind == "cuda" else None
        if n is not None:
            extra = (f"  used {_gb(n.memory_used)}  util {n.utilization_gpu}%  {n.temperature_c} C  "
                     f"power {n.power_w or 0:.0f}/{n.power_limit_w or 0:.0f} W  NVLink {n.nvlink_active}")
        lines.append(f"{g.torch_device}: {g.name}  {_gb(g.total_memory)}{cap}{' (ROCm)' if g.is_hip else ''}{extra}")
    c = s.cpu
    lines.append(f"CPU: {c.name}, {c.physical_cores} cores ({c.logical_cores} logical), RAM {_gb(c.ram_total)} "
                 f"({_gb(c.ram_available)} available), bf16 {'yes' if c.bf16 else 'no'}, AMX {'yes' if c.amx else 'no'}, "
                 f"torch threads {c.torch_threads}")
    lines += ["", "Topology (peer access):", format_matrix(d.topology), "", "Measured copy bandwidth:"]
    for b in d.bandwidth:
        what = "host memcpy" if b.src == b.dst == "cpu" else ""
        lines.append(f"  {b.src:>8} -> {b.dst:<8} {b.gb_per_s:7.1f} GB/s  ({b.nbytes // 1024 ** 2} MiB) {what}")
    if not d.bandwidth:
        lines.append("  (not measured)")
    lines += ["", "Advice:"]
    for a in d.advice:
        lines.append(f"  {a.topic:<10} {a.flags or '(defaults)'}")
        lines.append(f"  {'':<10} {a.why}")
    return "\n".join(lines)

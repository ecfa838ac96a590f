"""Discovery, topology, bandwidth and doctor on this machine (a real CPU; GPUs only if present)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from diffmesh.devices.discovery import cpu_info, discover, nvml_report
from diffmesh.devices.doctor import examine, format_text
from diffmesh.devices.precision import DeviceFacts, resolve_precision
from diffmesh.devices.topology import measure_bandwidth, peer_matrix


def test_cpu_info_reports_cores_and_ram():
    info = cpu_info()
    assert info.logical_cores >= 1 and info.ram_total > info.ram_available > 0 and info.name


def test_nvml_reports_the_driver_and_devices_or_fails_soft_with_a_reason():
    report = nvml_report()
    if report.available:                 # an NVIDIA driver: NVML sees at least the devices torch sees
        assert report.driver_version and report.reason is None
        assert len(report.devices) >= torch.cuda.device_count()
        assert all(d.name and d.memory_total > 0 for d in report.devices)
    else:                                # no driver or no library: a reason, no devices, no exception
        assert report.reason and report.devices == []


def test_host_memcpy_bandwidth_is_measured():
    result = measure_bandwidth("cpu", "cpu", nbytes=8 * 1024 ** 2, repeats=2)
    assert result.seconds > 0 and result.gb_per_s > 0.1


def test_peer_matrix_has_a_row_and_column_per_cuda_device_and_x_on_the_diagonal():
    system = discover(with_nvml=False)
    cuda = [a.torch_device for a in system.accelerators if a.kind == "cuda"]
    assert len(cuda) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    matrix = peer_matrix(system.accelerators)
    assert sorted(matrix) == sorted(cuda)                     # {} on a machine without CUDA devices
    for src, row in matrix.items():
        assert sorted(row) == sorted(cuda) and row[src] == "X"
        assert all(row[dst] in ("P2P", "SYS") or row[dst].startswith("NV") for dst in row if dst != src)


def test_precision_defaults_to_fp32_on_cpu_and_flags_override():
    cpu = DeviceFacts("cpu")
    assert resolve_precision("unet", cpu).storage == torch.float32
    assert resolve_precision("unet", cpu, {"dtypes": {"unet": "bf16"}}).compute == torch.bfloat16
    assert resolve_precision("vae", cpu, {"force_dtype": "fp16"}).storage == torch.float16
    assert resolve_precision("unet", cpu, {"dtypes": {"unet": "bf16"}}, requested="fp16").storage == torch.float16
    fp8 = resolve_precision("unet", DeviceFacts("cuda", (8, 9)), {"dtypes": {"unet": "fp8_e4m3fn"}})
    assert fp8.storage == torch.float8_e4m3fn and fp8.compute == torch.bfloat16
    assert resolve_precision("vae", DeviceFacts("cuda", (7, 5))).storage == torch.float32


def test_doctor_lists_each_gpu_or_says_there_is_none_and_advises_cpu_workers():
    diagnosis = examine(measure=True, nbytes=4 * 1024 ** 2)
    text = format_text(diagnosis)
    assert "CPU:" in text and "Advice:" in text and "GB/s" in text
    gpus = diagnosis.system.accelerators
    assert diagnosis.system.has_gpu == bool(gpus)
    if gpus:                             # each device on its own line, and no advice to run on the CPU
        assert "GPUs: none found" not in text
        assert all(f"{g.torch_device}: {g.name}" in text for g in gpus)
        assert not any(a.topic == "devices" and a.flags.startswith("--cpu") for a in diagnosis.advice)
    else:
        assert "GPUs: none found" in text
        assert any(a.topic == "devices" and a.flags.startswith("--cpu") for a in diagnosis.advice)


def test_doctor_json_is_machine_readable_through_the_cli():
    proc = subprocess.run([sys.executable, "-m", "diffmesh.cli", "doctor", "--json", "--bandwidth-mb", "4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"has_gpu", "system", "topology", "bandwidth", "advice"} <= set(data)
    assert data["bandwidth"][0]["src"] == "cpu"

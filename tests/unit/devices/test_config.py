"""Device flags: parsing, conflicts and device checks raise ConfigError naming the flag; exit status 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from diffmesh.config.devices import DeviceConfig, add_device_arguments
from diffmesh.devices.discovery import Accelerator
from diffmesh.errors import ConfigError

GPU_TURING = Accelerator("cuda", 0, "Tesla T4", 16 * 1024 ** 3, (7, 5))
GPU_AMPERE = Accelerator("cuda", 1, "A100", 80 * 1024 ** 3, (8, 0))


def parse(*argv: str, available=()) -> DeviceConfig:
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    return DeviceConfig.from_args(parser.parse_args(list(argv)), available=list(available))


def test_defaults_on_a_machine_without_gpus_give_one_cpu_worker_in_normalvram():
    config = parse()
    (spec,) = config.worker_specs(available=[])
    assert spec.device == "cpu" and spec.settings["vram_mode"] == "normalvram"
    assert spec.settings["vram_budget"] is None and spec.settings["smart_memory"] is True


@pytest.mark.parametrize("cores, workers, threads", [(2, 2, 1), (8, 2, 4), (16, 3, 5), (2, 4, 1)])
def test_cpu_workers_share_the_cores_by_default(monkeypatch, cores, workers, threads):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    specs = parse("--cpu", "--workers", str(workers)).worker_specs()
    assert [(s.worker_id, s.device, s.threads) for s in specs] == [(i, "cpu", threads) for i in range(workers)]


def test_one_cpu_worker_keeps_torchs_thread_default_and_the_flag_overrides(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [s.threads for s in parse("--cpu").worker_specs()] == [None]          # torch: all cores
    assert [s.threads for s in parse("--cpu", "--workers", "2", "--threads-per-worker", "3").worker_specs()] == [3, 3]


@pytest.mark.parametrize("argv, flag", [
    (("--highvram", "--lowvram"), "--lowvram"),
    (("--fp16-unet", "--bf16-unet"), "--bf16-unet"),
    (("--fp16-vae", "--fp32-vae"), "--fp32-vae"),
    (("--force-fp16", "--force-fp32"), "--force-fp32"),
    (("--cpu", "--cuda-device", "0"), "--cpu"),
    (("--cpu", "--gpu-only"), "--gpu-only"),
    (("--cache-none", "--cache-lru", "4"), "--cache-lru"),
    (("--workers", "0"), "--workers"),
    (("--vram-budget", "-1"), "--vram-budget"),
    (("--cuda-device", "x,y"), "--cuda-device"),
])
def test_conflicting_or_invalid_flags_raise_config_error_naming_the_flag(argv, flag):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert info.value.where in argv and flag in str(info.value)


def test_unknown_cuda_device_id_names_the_ids_found():
    with pytest.raises(ConfigError) as info:
        parse("--cuda-device", "0,3", available=[GPU_TURING, GPU_AMPERE])
    assert info.value.where == "--cuda-device" and "3" in info.value.message and "0, 1" in info.value.fix


def test_cuda_flags_without_any_gpu_suggest_cpu_workers():
    with pytest.raises(ConfigError) as info:
        parse("--cuda-device", "0", available=[])
    assert "--cpu" in info.value.fix


def test_bf16_on_a_gpu_without_bf16_is_refused_with_the_flag():
    with pytest.raises(ConfigError) as info:
        parse("--bf16-unet", "--cuda-device", "0", available=[GPU_TURING])
    assert info.value.where == "--bf16-unet" and "8.0" in info.value.message
    assert parse("--bf16-unet", "--cuda-device", "1", available=[GPU_TURING, GPU_AMPERE]).unet_dtype == "bf16"


def test_default_device_becomes_worker_zero_and_all_selects_every_gpu():
    specs = parse("--cuda-device", "all", "--default-device", "1", "--lowvram",
                  available=[GPU_TURING, GPU_AMPERE]).worker_specs(available=[GPU_TURING, GPU_AMPERE])
    assert [s.device for s in specs] == ["cuda:1", "cuda:0"]
    assert all(s.settings["vram_mode"] == "lowvram" for s in specs)


def test_workers_flag_with_gpus_present_is_refused():
    with pytest.raises(ConfigError) as info:
        parse("--workers", "2", available=[GPU_AMPERE])
    assert info.value.where == "--workers"


def test_settings_carry_budget_bytes_precision_and_memory_flags():
    settings = parse("--cpu", "--novram", "--vram-budget", "0.5", "--reserve-vram", "1", "--fp8_e4m3fn-unet",
                     "--bf16-vae", "--fp16-text-enc", "--disable-smart-memory", "--cpu-vae").settings()
    assert settings["vram_mode"] == "novram" and settings["vram_budget"] == 512 * 1024 ** 2
    assert settings["reserve_vram"] == 1024 ** 3 and settings["smart_memory"] is False and settings["cpu_vae"]
    assert settings["dtypes"] == {"unet": "fp8_e4m3fn", "vae": "bf16", "clip": "fp16"}


def test_config_file_form_builds_the_same_config_and_rejects_unknown_keys():
    config = DeviceConfig.from_dict({"cpu": True, "workers": 2, "vram_mode": "lowvram", "vram_budget_gb": 2})
    assert config == parse("--cpu", "--workers", "2", "--lowvram", "--vram-budget", "2")
    with pytest.raises(ConfigError) as info:
        DeviceConfig.from_dict({"vram_budget": 2})
    assert "vram_budget_gb" in info.value.fix
    with pytest.raises(ConfigError) as info:
        DeviceConfig.from_dict({"cpu": True, "vram_mode": "maxvram"})
    assert info.value.where == "--normalvram"


def test_every_config_field_has_a_flag_and_a_help_line():
    lines = DeviceConfig.help_lines()
    assert all(text.startswith("--") and len(text.split(": ", 1)[1]) > 10 for text in lines.values())


def test_cli_exits_with_status_2_on_conflicting_memory_flags(tmp_path):
    workflow = tmp_path / "x.json"
    workflow.write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "diffmesh.cli", "run", "--highvram", "--lowvram", str(workflow)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--highvram and --lowvram conflict" in proc.stderr

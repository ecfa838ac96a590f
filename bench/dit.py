"""Diffusion-transformer benchmark: per-step sampling time and peak RSS of the full-width reference
transformers of make_dit_random.py (fp32) at 256x256 and 1024x1024, each sampled like its reference
run (KSampler euler/simple): Flux.1-dev (width 3072, 1 double + 1 single block; cfg 1, FluxGuidance
3.5, ModelSamplingFlux for the size, a 256-row T5-like context), Z-Image (width 3840, 1 layer + the
4 refiners; ModelSamplingAuraFlow 3, cfg 1, a 400-row caption), Qwen-Image (width 3072, 1 block;
ModelSamplingAuraFlow 3.1, cfg 2.5 with a 397-row positive and a 10-row negative, so two passes a
step as in ComfyUI). Each (family, size) runs in its own subprocess, so peak RSS is per run and
includes loading the file.

    python bench/dit.py                              # flux, 2 threads, sizes 256 and 1024
    python bench/dit.py --families flux zimage qwenimage --sizes 256
    python bench/dit.py --threads 1 --sizes 256 --steps 4 --out bench/results/dit-1thread.json
    python bench/dit.py --comfyui ~/ComfyUI         # also ComfyUI itself (UNETLoader path, comfy.sample), same inputs

Output: one JSON document on stdout and in bench/results/dit.json (or --out), next to ComfyUI
0.8.0's figures for the 256x256 reference run (reference README: KSampler 10.1 s for 4 steps,
model load 0.9 s, peak RSS 4.5 GiB for the whole process with the VAE decode).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / ".cache" / "dit" / "flux1-dev-random.safetensors"
FILES = {"flux": "flux1-dev-random.safetensors", "zimage": "zimage-random.safetensors",
         "qwenimage": "qwenimage-1block-random.safetensors"}
MAKER = Path("/work/shared/reference/make_dit_random.py")
GIB = 1024 ** 3
# ComfyUI 0.8.0's reference runs at 256x256 (reference README): KSampler seconds for 4 steps, peak RSS
COMFYUI_REFERENCE_256 = {"flux": {"per_step_s": 10.1 / 4, "peak_rss_gib": 4.5},
                         "zimage": {"per_step_s": 25.6 / 4, "peak_rss_gib": 7.2},
                         "qwenimage": {"per_step_s": 9.2 / 4, "peak_rss_gib": 3.3}}


def _ensure_model(family: str = "flux") -> Path:
    path = MODEL.parent / FILES[family]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if MAKER.exists():
            subprocess.run([sys.executable, str(MAKER), "--family", family, "--part", "model", "--out", str(path)],
                           check=True)
        else:
            from diffmesh.models.testmodels import make_test_model

            make_test_model(family, "reference", path)
    return path


def _workload(family: str, size: int):
    """(sampling override, cfg, positive, negative, latent) of a family's reference run at `size`."""
    import torch

    from diffmesh.nodes.dit import flux_mu

    g = torch.Generator().manual_seed(0)
    h = w = size // 8
    if family == "flux":
        cond = [[torch.randn(1, 256, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                          "guidance": 3.5}]]
        return ("flux", flux_mu(1.15, 0.5, size, size), 1.0), 1.0, cond, cond, torch.zeros(1, 16, h, w)
    if family == "zimage":
        cond = [[torch.randn(1, 400, 2560, generator=g), {}]]
        return ("shift", 3.0, 1.0), 1.0, cond, cond, torch.zeros(1, 16, h, w)
    positive = [[torch.randn(1, 397, 3584, generator=g), {}]]
    negative = [[torch.randn(1, 10, 3584, generator=g), {}]]
    return ("shift", 3.1, 1.0), 2.5, positive, negative, torch.zeros(1, 16, 1, h, w)


def run_one(size: int, steps: int, threads: int, family: str = "flux") -> dict:
    """In this process: load, then sample `steps` euler steps at `size`; per-step times from the callback."""
    import torch

    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.pipeline import run_sample_job
    from diffmesh.sampling.schedules import ksampler_sigmas

    torch.set_num_threads(threads)
    sampling, cfg, positive, negative, latent = _workload(family, size)
    handle = ModelHandle(str(MODEL.parent / FILES[family]), "unet", family, sampling=sampling)
    start = time.perf_counter()
    model = build_component(handle, "cpu")
    load_s = time.perf_counter() - start
    job = SampleJob(latent=latent, noise=prepare_noise(latent, 42, None),
                    sigmas=ksampler_sigmas(model_sampling_for(handle), "simple", "euler", steps, 1.0),
                    sampler_name="euler", cfg=cfg, positive=positive, negative=negative, seed=42)
    marks = [(time.perf_counter(), time.process_time())]
    with torch.inference_mode():
        run_sample_job(model, job, lambda step, total, x0: marks.append((time.perf_counter(), time.process_time())))
    per_step = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    # CPU seconds per step (all threads): less sensitive than wall time to other processes on a shared machine
    cpu_step = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return {"family": family, "size": size, "steps": steps, "threads": threads, "load_s": round(load_s, 3),
            "per_step_s": [round(t, 3) for t in per_step], "mean_step_s": round(sum(per_step) / len(per_step), 3),
            "cpu_s_per_step": [round(t, 3) for t in cpu_step], "sampling_s": round(sum(per_step), 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)}


def run_comfyui(size: int, steps: int, threads: int, comfy_dir: str, family: str = "flux") -> dict:
    """ComfyUI's own code on the same weights and inputs: `comfy.sd.load_diffusion_model` (UNETLoader),
    the family's ModelSampling patch node, `comfy.sample.sample` with euler/simple and the same
    conditioning tensors and cfg as `run_one`; per-step times from the sampler callback. A checkout at
    `comfy_dir` with its Python dependencies importable (PYTHONPATH) is the caller's business."""
    import torch

    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.sample
    import comfy.sd
    import comfy_extras.nodes_model_advanced as nma

    torch.set_num_threads(threads)
    sampling, cfg, positive, negative, latent = _workload(family, size)
    start = time.perf_counter()
    model = comfy.sd.load_diffusion_model(str(MODEL.parent / FILES[family]))
    load_s = time.perf_counter() - start
    if family == "flux":
        model = nma.ModelSamplingFlux().patch(model, 1.15, 0.5, size, size)[0]
    else:
        model = nma.ModelSamplingAuraFlow().patch_aura(model, sampling[1])[0]
    if family == "zimage":  # the reference run's conditioning carries the caption's attention mask
        positive = negative = [[positive[0][0], {"attention_mask": torch.ones(1, positive[0][0].shape[1], dtype=torch.long)}]]
    noise = comfy.sample.prepare_noise(comfy.sample.fix_empty_latent_channels(model, latent), 42)
    marks = [(time.perf_counter(), time.process_time())]
    comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                        callback=lambda *args: marks.append((time.perf_counter(), time.process_time())),
                        disable_pbar=True, seed=42)
    marks = marks[:1] + marks[-steps:]  # one callback per step
    per_step = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    return {"family": family, "size": size, "steps": steps, "threads": threads,
            "implementation": "ComfyUI (load_diffusion_model + comfy.sample.sample)",
            "load_s": round(load_s, 3), "per_step_s": [round(t, 3) for t in per_step],
            "mean_step_s": round(sum(per_step) / len(per_step), 3),
            "cpu_s_per_step": [round(b[1] - a[1], 3) for a, b in zip(marks, marks[1:])],
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", choices=sorted(FILES), default=["flux"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--steps", type=int, default=None, help="euler steps (default: 4 at 256, 2 above)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "dit.json"))
    ap.add_argument("--comfyui", default=None, metavar="DIR",
                    help="also time ComfyUI from this checkout on the same inputs, alternating with ours")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-comfyui", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-family", default="flux", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        run = run_comfyui(a.child, a.steps, a.threads, a.child_comfyui, a.child_family) if a.child_comfyui else \
            run_one(a.child, a.steps, a.threads, a.child_family)
        print(json.dumps(run))
        return 0
    runs = []
    for family in a.families:
        _ensure_model(family)
        for size in a.sizes:
            steps = a.steps or (4 if size <= 256 else 2)
            comfys = [None, a.comfyui] if a.comfyui else [None]
            for comfy in comfys:
                extra = ["--child-comfyui", comfy] if comfy else []
                out = subprocess.run([sys.executable, __file__, "--child", str(size), "--steps", str(steps),
                                      "--threads", str(a.threads), "--child-family", family, *extra],
                                     check=True, capture_output=True, text=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"benchmark": "dit", "models": {f: FILES[f] for f in a.families},
              "machine": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
              "runs": runs, "comfyui_0_8_0_256": COMFYUI_REFERENCE_256}
    for run in runs:
        ref = COMFYUI_REFERENCE_256.get(run.get("family"))
        if run["size"] == 256 and "implementation" not in run and ref:
            run["per_step_ratio_vs_comfyui_256"] = round(run["mean_step_s"] / ref["per_step_s"], 3)
    from diffmesh.benchmarks.report import write_report

    write_report(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

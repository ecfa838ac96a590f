"""Diffusion-transformer benchmark: per-step sampling time and peak RSS of the full-width reference
Flux.1-dev transformer (make_dit_random.py: width 3072, 1 double + 1 single block, fp32) at 256x256
and 1024x1024, sampled like the reference run (KSampler euler/simple, cfg 1, FluxGuidance 3.5,
ModelSamplingFlux for the size, a 256-row T5-like context). Each size runs in its own subprocess,
so peak RSS is per size and includes loading the 2.2 GB file.

    python bench/dit.py                              # 2 threads, sizes 256 and 1024
    python bench/dit.py --threads 1 --sizes 256 --steps 4 --out bench/results/dit-1thread.json
    python bench/dit.py --comfyui ~/ComfyUI         # also ComfyUI's Flux module, same weights and inputs

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
MAKER = Path("/work/shared/reference/make_dit_random.py")
GIB = 1024 ** 3
COMFYUI_256 = {"ksampler_s": 10.1, "steps": 4, "per_step_s": 10.1 / 4, "load_s": 0.9, "peak_rss_gib": 4.5,
               "note": "ComfyUI 0.8.0, reference machine (2 cores, fp32, 2 threads); RSS of the whole process "
                       "including the VAE decode"}


def _ensure_model() -> Path:
    if not MODEL.exists():
        MODEL.parent.mkdir(parents=True, exist_ok=True)
        if MAKER.exists():
            subprocess.run([sys.executable, str(MAKER), "--family", "flux", "--part", "model", "--out", str(MODEL)],
                           check=True)
        else:
            from diffmesh.models.testmodels import make_test_model

            make_test_model("flux", "reference", MODEL)
    return MODEL


def run_one(size: int, steps: int, threads: int) -> dict:
    """In this process: load, then sample `steps` euler steps at `size`; per-step times from the callback."""
    import torch

    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component
    from diffmesh.nodes.dit import flux_mu
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.pipeline import run_sample_job
    from diffmesh.sampling.schedules import ksampler_sigmas

    torch.set_num_threads(threads)
    handle = ModelHandle(str(MODEL), "unet", "flux", sampling=("flux", flux_mu(1.15, 0.5, size, size), 1.0))
    start = time.perf_counter()
    model = build_component(handle, "cpu")
    load_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 256, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                      "guidance": 3.5}]]
    latent = torch.zeros(1, 16, size // 8, size // 8)
    job = SampleJob(latent=latent, noise=prepare_noise(latent, 42, None),
                    sigmas=ksampler_sigmas(model_sampling_for(handle), "simple", "euler", steps, 1.0),
                    sampler_name="euler", cfg=1.0, positive=cond, negative=cond, seed=42)
    marks = [(time.perf_counter(), time.process_time())]
    with torch.inference_mode():
        run_sample_job(model, job, lambda step, total, x0: marks.append((time.perf_counter(), time.process_time())))
    per_step = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    # CPU seconds per step (all threads): less sensitive than wall time to other processes on a shared machine
    cpu_step = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return {"size": size, "steps": steps, "threads": threads, "load_s": round(load_s, 3),
            "per_step_s": [round(t, 3) for t in per_step], "mean_step_s": round(sum(per_step) / len(per_step), 3),
            "cpu_s_per_step": [round(t, 3) for t in cpu_step], "sampling_s": round(sum(per_step), 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)}


def run_comfyui(size: int, steps: int, threads: int, comfy_dir: str) -> dict:
    """ComfyUI's own Flux module (a checkout at `comfy_dir`, imported as run_dit_reference.py does) on the
    same weights and inputs, `steps` forward passes at `size`: a same-machine, same-moment comparison."""
    import torch

    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.ldm.flux.model as flux_model
    import comfy.ops
    from safetensors.torch import load_file

    from diffmesh.models.dit.flux import config as flux_config

    torch.set_num_threads(threads)
    start = time.perf_counter()
    sd = load_file(str(MODEL))
    cfg = flux_config({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        net = flux_model.Flux(dtype=torch.float32, operations=comfy.ops.disable_weight_init, **cfg)
    net.load_state_dict(sd, assign=True)
    load_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(0)
    context, pooled = torch.randn(1, 256, 4096, generator=g), torch.randn(1, 768, generator=g)
    x = torch.randn(1, 16, size // 8, size // 8, generator=g)
    marks = [(time.perf_counter(), time.process_time())]
    with torch.inference_mode():
        for i in range(steps):
            net(x, torch.tensor([1.0 - i / steps]), context, y=pooled, guidance=torch.tensor([3.5]))
            marks.append((time.perf_counter(), time.process_time()))
    per_step = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    return {"size": size, "steps": steps, "threads": threads, "implementation": "ComfyUI Flux module",
            "load_s": round(load_s, 3), "per_step_s": [round(t, 3) for t in per_step],
            "mean_step_s": round(sum(per_step) / len(per_step), 3),
            "cpu_s_per_step": [round(b[1] - a[1], 3) for a, b in zip(marks, marks[1:])],
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--steps", type=int, default=None, help="euler steps (default: 4 at 256, 2 above)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "dit.json"))
    ap.add_argument("--comfyui", default=None, metavar="DIR",
                    help="also time ComfyUI's Flux module from this checkout, alternating with ours")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-comfyui", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        run = run_comfyui(a.child, a.steps, a.threads, a.child_comfyui) if a.child_comfyui else \
            run_one(a.child, a.steps, a.threads)
        print(json.dumps(run))
        return 0
    _ensure_model()
    runs = []
    for size in a.sizes:
        steps = a.steps or (4 if size <= 256 else 2)
        for comfy in ([None, a.comfyui] if a.comfyui else [None]):
            extra = ["--child-comfyui", comfy] if comfy else []
            out = subprocess.run([sys.executable, __file__, "--child", str(size), "--steps", str(steps),
                                  "--threads", str(a.threads), *extra], check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"benchmark": "dit", "model": "flux1-dev-random (3072 wide, 1 double + 1 single block, fp32)",
              "machine": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
              "runs": runs, "comfyui_0_8_0_256": COMFYUI_256}
    small = next((r for r in runs if r["size"] == 256 and "implementation" not in r), None)
    if small:
        result["per_step_ratio_vs_comfyui_256"] = round(small["mean_step_s"] / COMFYUI_256["per_step_s"], 3)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

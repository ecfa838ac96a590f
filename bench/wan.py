"""Wan 2.1 benchmark: per-step time and peak RSS of the Wan transformer at the 1.3B model's width (dim
1536, 12 heads, ffn 8960, but 2 layers instead of 30: a full model is ~15x this per step) on a 33-frame
480x832 video latent (1x16x9x60x104 = 14,040 tokens), positive and negative batched as CFG runs them;
and VAE decode time and peak RSS per frame of the full-size random Wan 2.1 VAE at 480x832. Random
weights (make-test-model layouts), fp32; each part runs in its own subprocess, so peak RSS is per part.

    python bench/wan.py                                  # 2 threads, 1 step, 1 latent frame (1 video frame)
    python bench/wan.py --steps 2 --vae-latent-frames 3 --threads 1 --out bench/results/wan-1thread.json

Output: one JSON document on stdout and in bench/results/wan.json (or --out).
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
VAE = REPO / ".cache" / "dit" / "wan21-vae-random.safetensors"
GIB = 1024 ** 3
LATENT = (16, 9, 60, 104)          # 33 frames at 480x832


def _rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)


def run_transformer(steps: int, threads: int) -> dict:
    import torch

    from diffmesh.models import testmodels_dit
    from diffmesh.models.dit import family

    torch.set_num_threads(threads)
    fam = family("wan21")
    sd = testmodels_dit.state_dict("wan21", "1.3b-2layers")
    with torch.device("meta"):
        net = fam.build(fam.config({k: tuple(v.shape) for k, v in sd.items()}))
    net.load_state_dict(sd, assign=True)
    net.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *LATENT, generator=g)                 # positive and negative, batched
    context = torch.zeros(2, 512, 4096)
    context[:, :80] = torch.randn(2, 80, 4096, generator=g)
    marks = [(time.perf_counter(), time.process_time())]
    with torch.inference_mode():
        for i in range(steps):
            net(x, torch.full((2,), 1000.0 * (1 - i / max(steps, 1))), context)
            marks.append((time.perf_counter(), time.process_time()))
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    return {"part": "transformer", "dim": 1536, "heads": 12, "layers": 2, "latent": [2, *LATENT],
            "tokens_per_sample": LATENT[1] * (LATENT[2] // 2) * (LATENT[3] // 2), "threads": threads,
            "per_step_s": [round(t, 2) for t in wall],
            "cpu_s_per_step": [round(b[1] - a[1], 2) for a, b in zip(marks, marks[1:])],
            "est_full_30_layer_step_s": round(min(wall) * 15, 1), "peak_rss_gib": _rss_gib()}


def run_vae(latent_frames: int, threads: int) -> dict:
    import torch

    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component

    torch.set_num_threads(threads)
    if not VAE.exists():
        from diffmesh.models import testmodels_dit

        testmodels_dit.write("wan21vae", "reference", VAE)
    vae = build_component(ModelHandle(str(VAE), "vae", "wan21"), "cpu")
    z = torch.randn(1, LATENT[0], latent_frames, *LATENT[2:], generator=torch.Generator().manual_seed(0))
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        frames = vae.decode(z)
    wall = time.perf_counter() - start
    n = frames.shape[0]
    return {"part": "vae_decode", "latent": list(z.shape), "frames": n, "size": list(frames.shape[1:3]),
            "threads": threads, "decode_s": round(wall, 2), "s_per_frame": round(wall / n, 2),
            "cpu_s": round(time.process_time() - cpu, 2), "peak_rss_gib": _rss_gib()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1)
    # 2 latent frames (5 video frames) at 480x832 passed 7.4 GiB RSS before finishing on a 24 GiB machine
    ap.add_argument("--vae-latent-frames", type=int, default=1, help="latent frames decoded (1 + 4*(n-1) frames)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "wan.json"))
    ap.add_argument("--child", choices=("transformer", "vae"), default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "transformer":
        print(json.dumps(run_transformer(a.steps, a.threads)))
        return 0
    if a.child == "vae":
        print(json.dumps(run_vae(a.vae_latent_frames, a.threads)))
        return 0
    runs = []
    for part in ("transformer", "vae"):
        out = subprocess.run([sys.executable, __file__, "--child", part, "--steps", str(a.steps), "--threads",
                              str(a.threads), "--vae-latent-frames", str(a.vae_latent_frames)],
                             check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    machine = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    result = {"benchmark": "wan", "machine": machine, "runs": runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

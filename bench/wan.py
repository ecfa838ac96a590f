"""Wan 2.1 benchmark: per-step time and peak RSS of the Wan transformer at the 1.3B model's width (dim
1536, 12 heads, ffn 8960, but 2 layers instead of 30: a full model is ~15x this per step) on a 33-frame
480x832 video latent (1x16x9x60x104 = 14,040 tokens), positive and negative batched as CFG runs them;
and VAE decode time and peak RSS per frame of the full-size random Wan 2.1 VAE. Random weights
(make-test-model layouts), fp32; each run is its own subprocess, so peak RSS is per run.

VAE runs: one 480x832 frame (the first latent frame), then clips of growing length at a smaller size
(`--vae-series-size`, default 120x208) to show that the causal chunked decode's peak does not grow
with the number of frames (each latent frame is decoded with the feature caches and its 4 frames go
to the CPU output at once); optionally a 480x832 clip through VAEDecodeTiled's path (`--vae-tiled`).
`loaded_rss_gib` is the RSS after the VAE is built: peak minus loaded is the decode's working memory.

    python bench/wan.py                                  # 2 threads, 1 step
    python bench/wan.py --steps 2 --vae-series 1 2 3 5 --threads 1 --out bench/results/wan-1thread.json

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


def run_vae(latent_frames: int, threads: int, size: tuple[int, int] = (480, 832), tile: int = 0) -> dict:
    import torch

    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component

    torch.set_num_threads(threads)
    if not VAE.exists():
        from diffmesh.models import testmodels_dit

        testmodels_dit.write("wan21vae", "reference", VAE)
    vae = build_component(ModelHandle(str(VAE), "vae", "wan21"), "cpu")
    loaded = _current_rss_gib()
    z = torch.randn(1, LATENT[0], latent_frames, size[0] // 8, size[1] // 8, generator=torch.Generator().manual_seed(0))
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        frames = vae.decode_tiled(z, tile, tile // 4) if tile else vae.decode(z)
    wall = time.perf_counter() - start
    n = frames.shape[0]
    return {"part": "vae_decode_tiled" if tile else "vae_decode", "tile": tile or None, "latent": list(z.shape),
            "frames": n, "size": list(frames.shape[1:3]), "threads": threads, "decode_s": round(wall, 2),
            "s_per_frame": round(wall / n, 2), "cpu_s": round(time.process_time() - cpu, 2),
            "cpu_s_per_frame": round((time.process_time() - cpu) / n, 2),
            "loaded_rss_gib": loaded, "peak_rss_gib": _rss_gib()}


def _current_rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--vae-series", type=int, nargs="+", default=[1, 2, 3, 5],
                    help="latent frame counts of the length series (1 + 4*(n-1) frames each)")
    ap.add_argument("--vae-series-size", type=int, nargs=2, default=[120, 208], metavar=("H", "W"))
    ap.add_argument("--vae-tiled", type=int, nargs=2, default=[0, 0], metavar=("LATENT_FRAMES", "TILE"),
                    help="also a 480x832 clip through decode_tiled (tile in pixels, overlap tile/4); off by default")
    ap.add_argument("--skip-transformer", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "wan.json"))
    ap.add_argument("--child", choices=("transformer", "vae"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-vae", type=int, nargs=4, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "transformer":
        print(json.dumps(run_transformer(a.steps, a.threads)))
        return 0
    if a.child == "vae":
        frames, h, w, tile = a.child_vae
        print(json.dumps(run_vae(frames, a.threads, (h, w), tile)))
        return 0
    children = [] if a.skip_transformer else [["--child", "transformer"]]
    vae_runs = [(1, 480, 832, 0)] + [(n, *a.vae_series_size, 0) for n in a.vae_series]
    if a.vae_tiled[0]:
        vae_runs.append((a.vae_tiled[0], 480, 832, a.vae_tiled[1]))
    children += [["--child", "vae", "--child-vae", *map(str, r)] for r in vae_runs]
    runs = []
    for child in children:
        out = subprocess.run([sys.executable, __file__, *child, "--steps", str(a.steps), "--threads", str(a.threads)],
                             check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    machine = {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    result = {"benchmark": "wan", "machine": machine, "runs": runs}
    from diffmesh.benchmarks.report import write_report

    write_report(a.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-step cost of streaming weights vs keeping them resident, as a function of bytes streamed.

For k = 0 .. all of the UNet's blocks, the last k blocks stream per forward (diffmesh's lowvram
hooks: copy in from the host store before the block, drop after) and the rest stay resident; one
"step" is one UNet forward of batch 2 (cond + uncond). A least-squares line through
(GB streamed per step, seconds per step) gives the slope in seconds per GB; 1/slope is the
effective link bandwidth, compared with the measured copy bandwidth. Reference point:
ComfyUI-MultiGPU's published result that step time grows linearly with GB offloaded, with a slope
set by the link (PCIe/NVLink there; host memcpy on a CPU-only machine here).

    python bench/streaming.py                       # full SD1.5 UNet at 256x256 (.cache/sd15-random.safetensors)
    python bench/streaming.py --proxy               # scaled-down proxy (a stack of Linear blocks), seconds
    python bench/streaming.py --device cuda:0       # host->GPU streaming on a GPU machine

Prints JSON (and writes it to --out when given). Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from diffmesh.devices.offload import Placement  # noqa: E402
from diffmesh.devices.topology import measure_bandwidth  # noqa: E402


def build_unet(path: Path, device: torch.device):
    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component

    unet = build_component(ModelHandle(str(path), "unet", "sd1"), device, torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g)            # 256x256 image -> 32x32 latent, cond + uncond
    ctx = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([500.0, 500.0])
    return unet, lambda: unet(x, t, ctx)


def build_proxy(device: torch.device, width: int = 2048, depth: int = 24):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)]).to(device).eval()
    x = torch.randn(64, width, device=device)
    return model, lambda: model(x)


def time_step(step, repeats: int, device: torch.device) -> float:
    """Median seconds of one step after one warm-up."""
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x; returns (a, b, r^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return a, b, (1 - ss_res / ss_tot) if ss_tot else 1.0


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.proxy:
        model, step = build_proxy(device)
    else:
        model, step = build_unet(Path(args.checkpoint), device)
    used: list[int] = []
    placement = Placement(model, device, used.append)
    placement.adopt(on_device=True)
    total = placement.total_bytes
    limit = max(1, total // args.blocks)
    blocks = placement.blocks(limit)
    counts = sorted({round(i * len(blocks) / (args.points - 1)) for i in range(args.points)})
    pinned = sum(e.nbytes for e in placement.entries.values() if e.pinned)
    samples: dict[int, list[float]] = {k: [] for k in counts}
    streamed_bytes: dict[int, int] = {}
    for round_index in range(args.rounds):   # round-robin: slow drifts of a shared machine hit every point
        for k in counts:
            placement.place_partial(sum(b.nbytes for b in blocks[: len(blocks) - k]) + pinned, limit, prefetch=True)
            streamed_bytes[k] = placement.streamed_bytes()
            samples[k].append(time_step(step, args.repeats, device))
            print(f"  round {round_index}: {k:3d} blocks streamed  {streamed_bytes[k] / 1e9:6.3f} GB  "
                  f"{samples[k][-1]:7.3f} s/step", file=sys.stderr)
    rows = [{"streamed_blocks": k, "streamed_gb": streamed_bytes[k] / 1e9, "step_s": statistics.median(samples[k]),
             "samples_s": samples[k]} for k in counts]
    placement.load_all()
    a, b, r2 = fit_line([r["streamed_gb"] for r in rows], [r["step_s"] for r in rows])
    link = measure_bandwidth("cpu", device, nbytes=256 * 1024 ** 2)
    return {
        "model": "proxy-mlp" if args.proxy else "sd15-unet-256px-batch2", "device": str(device),
        "torch_threads": torch.get_num_threads(), "model_gb": total / 1e9, "blocks": len(blocks), "points": rows,
        "fit": {"resident_step_s": a, "slope_s_per_gb": b, "r2": r2,
                "effective_gb_per_s": (1 / b) if b > 0 else None},
        "measured_copy": link.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / ".cache" / "sd15-random.safetensors"))
    parser.add_argument("--proxy", action="store_true", help="use a small Linear stack instead of the SD1.5 UNet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady figures on a shared CPU)")
    parser.add_argument("--points", type=int, default=5, help="how many streamed-block counts to measure")
    parser.add_argument("--blocks", type=int, default=32, help="split the model into blocks of about 1/N of it")
    parser.add_argument("--repeats", type=int, default=1, help="timed steps per point and round (median)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all points (median over rounds)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Activation memory per family and resolution: measure, fit, and write the shipped table.

For every family diffmesh runs (sd1, sd2, sdxl UNets; flux, zimage, qwenimage, wan21, wan22
transformers) this loads random-weight models of two or more widths (the tiny test models, medium
widths built from the test-model specs, and the reference files under .cache/dit/ where they are
small enough), runs one euler step of `run_sample_job` (fp32, no_grad, cfg 1 = one row, cfg 2 with
cond and uncond batched = two rows) at several latent sizes, and records the peak bytes the CPU
allocator holds beyond what it held before the step (`engine.activations.measure_peak`). Then it
fits per family bytes = rows (a T W + b T^2 + c W) + d W^2 (non-negative least squares, scaled up so
every point lies under the curve) and writes src/diffmesh/models/data/activations.json with the
machine, torch version and date.

    python3 bench/activations.py                       # all families, writes the table + JSON
    python3 bench/activations.py --families sd1 flux --no-table --out /tmp/a.json

Peak host memory: the largest model loaded is the reference Flux (2.2 GB fp32) plus its
activations at 512x512; models load one at a time. Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
TEST_MODELS = REPO / ".cache" / "test-models" / "models"
DIT = REPO / ".cache" / "dit"
FAMILIES = ("sd1", "sd2", "sdxl", "flux", "zimage", "qwenimage", "wan21", "wan22")
MARGIN = 1.10          # headroom over the largest measured/fitted ratio
# A UNet's largest convolution (deepest output block: 8W in, 4W out, 3x3) holds 1152 W^2 fp32 bytes;
# oneDNN may reorder a convolution's weights into a new buffer during the call, depending on the
# shapes (seen at width 192, not at 128), so d is at least that.
D_FLOOR = {"sd1": 1152.0, "sd2": 1152.0, "sdxl": 1152.0}
# measured and reported (predicted/measured), not fitted
HOLDOUT = {
    ("sd1", "holdout-192"): "a width between the fitted ones and full size: how the curve extrapolates",
    # make_dit_random.py's Wan: a 4096-wide text input projected into a 256-wide model, a ratio no
    # released Wan has (1.3B: 4096/1536, 14B: 4096/5120); its text projection outweighs the rest
    ("wan21", "reference-256"): "text input 16x the model width (released models: <= 2.7x)",
}


def _unet_file(family: str, channels: int, out: Path) -> Path:
    """A UNet-only checkpoint with the family's full structure at `channels` model channels."""
    from diffmesh.models import testspecs as ts

    s = ts.Spec()
    p = "model.diffusion_model."
    if family == "sd1":
        ts.unet_spec(s, p, model_channels=channels, context_dim=768)
    elif family == "sd2":
        ts.unet_spec(s, p, model_channels=channels, context_dim=1024, linear_proj=True)
    else:
        ts.unet_spec(s, p, model_channels=channels, channel_mult=(1, 2, 4), num_res_blocks=2,
                     transformer_depth=(0, 2, 10), attention_levels=(0, 1, 2), context_dim=2048,
                     linear_proj=True, adm_in_channels=6 * 256 + 1280)
    ts.save_safetensors_deterministic(ts.materialize(s, 0, torch.float32), str(out), {"format": "pt"})
    return out


def _flux_file(hidden: int, heads: int, out: Path) -> Path:
    from diffmesh.models import testspecs as ts
    from diffmesh.models.dit.testfiles import REFERENCE_FLUX, flux_spec

    spec = flux_spec(ts.Spec(), dict(REFERENCE_FLUX, hidden=hidden, heads=heads))
    ts.save_safetensors_deterministic(ts.materialize(spec, 0, torch.float32), str(out), {"format": "pt"})
    return out


def cases(families: tuple[str, ...], scratch: Path, quick: bool = False) -> list[dict]:
    """(family, model label, file, width, latent sides) for each model measured."""
    from diffmesh.models import testmodels_dit

    out: list[dict] = []

    def add(family, label, path_fn, width, sides, frames=(1,)):
        if family in families:
            out.append({"family": family, "model": label, "path": path_fn, "width": width, "sides": sides,
                        "frames": frames})

    small, medium = (16, 32, 48), (16, 32)
    if quick:
        small, medium = (16, 32), (16,)
    ckpt = TEST_MODELS / "checkpoints"
    for fam in ("sd1", "sd2", "sdxl"):
        add(fam, "tiny", lambda f=fam: ckpt / f"tiny-{f}.safetensors", 32, small)
        mid = 64 if fam == "sdxl" else 128                   # SDXL's depth-10 level: 0.4 GB at 64 channels
        add(fam, f"medium-{mid}", lambda f=fam, m=mid: _unet_file(f, m, scratch / f"{f}-{m}.safetensors"), mid, medium)
    # a width the fit does not see: how the curve extrapolates (reported, not fitted)
    add("sd1", "holdout-192", lambda: _unet_file("sd1", 192, scratch / "sd1-192.safetensors"), 192, (16, 32))
    dm = TEST_MODELS / "diffusion_models"
    add("flux", "tiny", lambda: dm / "tiny-flux-dev.safetensors", 256, small)
    add("flux", "medium-1024", lambda: _flux_file(1024, 8, scratch / "flux-1024.safetensors"), 1024, medium)
    add("flux", "reference-3072", lambda: DIT / "flux1-dev-random.safetensors", 3072, medium)
    add("zimage", "tiny", lambda: dm / "tiny-zimage.safetensors", 64, small)
    add("qwenimage", "tiny", lambda: dm / "tiny-qwenimage.safetensors", 64, small)
    add("qwenimage", "reference-3072", lambda: DIT / "qwenimage-1block-random.safetensors", 3072, medium)
    add("wan21", "tiny", lambda: testmodels_dit.write("wan21", "tiny", scratch / "wan21-tiny.safetensors"),
        128, small, (1, 3))
    add("wan21", "reference-256", lambda: DIT / "wan21-t2v-tiny-random.safetensors", 256, medium)
    add("wan21", "1.3b-2layers", lambda: testmodels_dit.write("wan21", "1.3b-2layers",
                                                             scratch / "wan21-1.3b.safetensors"), 1536, medium)
    add("wan22", "tiny-ti2v", lambda: testmodels_dit.write("wan21", "tiny-ti2v", scratch / "wan22.safetensors"),
        128, small)
    return out


def measure_model(case: dict) -> list[dict]:
    """Every (side, frames, rows) point of one model: peak allocator bytes of one sampler step."""
    from diffmesh.engine.activation_probe import conditioning, step_peak, tokens
    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component

    family, path = case["family"], str(case["path"]())
    handle = ModelHandle(path, "unet", family)
    model = build_component(handle, "cpu", "fp32")
    cond = conditioning(family, path)
    step_peak(model, handle, case["sides"][0], 1, 2, cond)        # warm-up: lazily built caches stay out
    points = []
    for frames in case["frames"]:
        for side in case["sides"]:
            for rows in (1, 2):
                start, cpu = time.perf_counter(), time.process_time()
                peak = step_peak(model, handle, side, frames, rows, cond)
                points.append({"family": family, "model": case["model"], "width": case["width"], "side": side,
                               "frames": frames, "tokens": tokens(family, side, frames), "rows": rows,
                               "peak_bytes": peak, "wall_s": round(time.perf_counter() - start, 3),
                               "cpu_s": round(time.process_time() - cpu, 3)})
                print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    del model
    gc.collect()
    return points


def fit(points: list[dict], d_floor: float = 0.0) -> dict:
    """Non-negative least squares of bytes = rows (a T W + b T^2 + c W) + d W^2, in relative error, then
    all four scaled by the largest measured/fitted ratio x MARGIN so no point lies above the curve;
    d raised to `d_floor` where the family's weight buffers need more."""
    from scipy.optimize import nnls
    import numpy as np

    features = np.array([[p["rows"] * p["tokens"] * p["width"], p["rows"] * p["tokens"] ** 2,
                          p["rows"] * p["width"], float(p["width"]) ** 2] for p in points], dtype=np.float64)
    y = np.array([p["peak_bytes"] for p in points], dtype=np.float64)
    weights = 1.0 / y                                    # relative error: small sizes count as much as large
    coef, _ = nnls(features * weights[:, None], y * weights)
    fitted = features @ coef
    ratio = float(np.max(y / fitted))
    scale = ratio * MARGIN
    coef = coef * scale
    coef[3] = max(coef[3], d_floor)
    over = (features @ coef) / y
    return {"a": float(coef[0]), "b": float(coef[1]), "c": float(coef[2]), "d": float(coef[3]),
            "margin": round(scale, 4), "points": len(points),
            "predicted_over_measured": {"min": round(float(over.min()), 3), "max": round(float(over.max()), 3)},
            "widths": sorted({p["width"] for p in points}), "tokens": [min(p["tokens"] for p in points),
                                                                          max(p["tokens"] for p in points)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer sizes (a smoke run)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "activations.json"))
    ap.add_argument("--table", default=str(REPO / "src" / "diffmesh" / "models" / "data" / "activations.json"))
    ap.add_argument("--no-table", action="store_true", help="do not rewrite the shipped table")
    ap.add_argument("--refit", metavar="RESULTS", help="fit the runs of an earlier --out file instead of measuring")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.refit:                                    # the runs of an earlier measurement, fitted again
        points = [p for p in json.loads(Path(a.refit).read_text())["runs"] if p["family"] in a.families]
    else:
        with tempfile.TemporaryDirectory(prefix="diffmesh-act-") as scratch:
            points = [p for case in cases(tuple(a.families), Path(scratch), a.quick) for p in measure_model(case)]
    for p in points:
        p["holdout"] = HOLDOUT.get((p["family"], p["model"]))
    by_family = {f: fit([p for p in points if p["family"] == f and not p["holdout"]], D_FLOOR.get(f, 0.0))
                 for f in a.families
                 if any(p["family"] == f and not p["holdout"] for p in points)}
    for p in points:
        if p["holdout"] and p["family"] in by_family:
            f = by_family[p["family"]]
            predicted = p["rows"] * (f["a"] * p["tokens"] * p["width"] + f["b"] * p["tokens"] ** 2
                                     + f["c"] * p["width"]) + f["d"] * p["width"] ** 2
            p["predicted_over_measured"] = round(predicted / p["peak_bytes"], 3)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "threads": a.threads}
    table = {"machine": machine, "torch": torch.__version__,
             "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
             "method": "peak CPU-allocator bytes of one euler step of run_sample_job, fp32, no_grad "
                       "(bench/activations.py)",
             "model": "bytes = rows * (a*T*W + b*T^2 + c*W) + d*W^2, fp32; T tokens, W width",
             "families": by_family}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({**table, "runs": points}, indent=1))
    if not a.no_table:
        if Path(a.table).exists() and set(a.families) != set(FAMILIES):   # keep the families not rerun
            old = json.loads(Path(a.table).read_text())["families"]
            table["families"] = {**old, **by_family}
        Path(a.table).parent.mkdir(parents=True, exist_ok=True)
        Path(a.table).write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Activation memory of one sampler forward, measured per family and fitted over widths and sizes.

`bench/activations.py` runs each family's random-weight models (tiny, medium and reference widths)
at several latent sizes with 1 and 2 rows, as the sampler calls them (one euler step of
`sampling.pipeline.run_sample_job` in fp32 under no_grad), and records the peak bytes torch's CPU
allocator holds beyond what was allocated before the step (`measure_peak`: the profiler's memory
events, so kernel workspaces count and the weights, allocated before, do not). It fits per family

    bytes(rows, T, W) = rows * (a * T * W + b * T^2 + c * W) + d * W^2        (fp32)

T = tokens (latent height x width for a UNet; image patches, frames included, for a transformer),
W = width (a UNet's `model_channels`; a transformer's hidden size), b the attention scores where a
kernel materialises them, c the text tokens and per-row vectors (at the context length used), d
what does not grow with a row: weight-sized buffers (on CPU, oneDNN's convolution can reorder a
layer's weights into a new buffer during the call, depending on the shapes: at small sizes that is
the peak; for the UNets d is at least their largest convolution, 1152 W^2 bytes). The
coefficients are scaled up together so that every measured point lies under the curve (`margin`,
>= 1): a budget that holds the prediction holds the peak at the measured widths and sizes.
The table (models/data/activations.json, shipped with the package) carries the machine, torch
version and date it was measured on; `activation_bytes` scales fp32 bytes by `bytes_per / 4` for
half precision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

TABLE = Path(__file__).resolve().parents[1] / "models" / "data" / "activations.json"   # shipped package data
# handle families that share a network with a measured one
ALIASES = {"sd15": "sd1", "sd2v": "sd2", "flux-schnell": "flux"}


def load_table(path: str | Path = TABLE) -> dict[str, Any]:
    """The shipped table: {"machine", "torch", "date", "families": {family: {"a", "b", "c", "d", ...}}}."""
    return json.loads(Path(path).read_text())


def family_fit(family: str, path: str | Path = TABLE) -> dict[str, Any] | None:
    """The fitted coefficients of `family` (aliases included), or None when it was not measured."""
    families = load_table(path)["families"]
    return families.get(ALIASES.get(family, family))


def activation_bytes(family: str, width: int, tokens: int, rows: int, bytes_per: int = 4,
                     path: str | Path = TABLE) -> int | None:
    """Predicted peak activation bytes of one forward of `rows` rows, or None for an unmeasured family.

    width: a UNet's model_channels or a transformer's hidden size; tokens: latent height x width
    (UNet) or image patches (transformer, all frames); bytes_per: 4 fp32, 2 fp16/bf16."""
    fit = family_fit(family, path)
    if fit is None:
        return None
    per_row = fit["a"] * tokens * width + fit["b"] * tokens * tokens + fit["c"] * width
    return int((rows * per_row + fit["d"] * width * width) * bytes_per / 4.0)


def measure_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes torch's CPU allocator holds during `fn()` beyond what it held when `fn` started.

    Counted from the profiler's memory events (every allocation and free through the allocator,
    kernel workspaces included), not from RSS, so the result does not depend on the C allocator's
    caching or on other threads."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and getattr(e.device_type(), "name", "") == "CPU"]
    events.sort(key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak

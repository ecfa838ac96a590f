"""ControlNet during sampling: ComfyUI's `ControlNet.get_control` and `control_merge`.

The apply nodes put an `AppliedControl` under the `control` key of CONDITIONING entries (ComfyUI's
`[[cond, {"control": ...}]]`). Several applied to the same conditioning form a chain through
`previous`; one object is shared by the positive and negative entries it was applied to, and only
entries with the same object (or none) are batched into one UNet call, as ComfyUI's
`can_concat_cond` requires.

Per UNet call (`ControlRunner.control`):
1. the chain's earlier members are evaluated first (`previous`);
2. outside [start_percent, end_percent] (as sigmas) a member contributes nothing, and returns what
   the earlier members gave;
3. the hint image (B,3,H,W) is scaled to the latent size x 8 with "nearest-exact" after a "center"
   crop to the latent's aspect ratio, and repeated to the rows of the call (ComfyUI's
   `broadcast_image_to`: per cond/uncond chunk);
4. the network runs on the UNet's scaled input, the UNet timestep, the call's context and SDXL's
   extra conditioning; each residual is pooled to its mean when `global_average_pooling` is set,
   then multiplied by `strength`;
5. the residuals of the earlier members are added (earlier + this, per block).
A T2I-adapter member skips 4: its features depend on the hint only (see `_adapter_features`), and
they land in "input" (and "middle" for SDXL) instead of "output".
The result `{"input": [...], "middle": [...], "output": [...]}` goes to the UNet as `control`.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Mapping

import torch


@dataclass(eq=False)
class AppliedControl:
    """One ControlNet applied to conditioning (identity matters: see the module docstring).

    net:      the CONTROL_NET (`models.controlnet.ControlNetRef`)
    hint:     the image as (B, 3, H, W) float32 in [0, 1] (ComfyUI's `image.movedim(-1, 1)`)
    previous: the control that was already on the conditioning entry (chaining), or None
    """

    net: Any
    hint: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: "AppliedControl | None" = None
    vae: Any = None          # ControlNetApplyAdvanced's optional VAE (used only by latent-space ControlNets)

    def chain(self) -> list["AppliedControl"]:
        """This control and every earlier one, latest first."""
        out, c = [], self
        while c is not None:
            out.append(c)
            c = c.previous
        return out


def control_refs(conditionings) -> list:
    """The distinct networks (CONTROL_NET refs) used by any entry of the given CONDITIONING lists."""
    refs: list = []
    for conditioning in conditionings:
        for item in conditioning or ():
            control = item[1].get("control") if len(item) > 1 else None
            for c in control.chain() if control is not None else ():
                if c.net not in refs:
                    refs.append(c.net)
    return refs


def broadcast_hint(hint: torch.Tensor, rows: int, chunks: int, batch_slice=None) -> torch.Tensor:
    """Hint rows for a call of `rows` = chunks x per-chunk rows (ComfyUI's `broadcast_image_to`).

    A one-image hint stays one row (it broadcasts). Otherwise each chunk gets the hint's rows cycled
    to the chunk's batch; under batch parallel (`batch_slice` = (start, stop, total)) the rows are
    cycled over the whole batch first and this worker's rows taken, so a split batch matches."""
    if hint.shape[0] == 1:
        return hint
    per_chunk = rows // chunks
    if batch_slice is not None:
        start, stop, total = batch_slice
        idx = torch.arange(start, stop) % min(hint.shape[0], total)
    else:
        idx = torch.arange(per_chunk) % min(hint.shape[0], per_chunk)
    one = hint[:per_chunk if batch_slice is None else batch_slice[2]][idx]
    return one if chunks == 1 else torch.cat([one] * chunks)


class ControlRunner:
    """Evaluates the applied controls of one sampling run (built by `run_sample_job`)."""

    def __init__(self, networks: Mapping[Any, Any], model_sampling, batch_slice=None):
        self.networks = networks
        self.model_sampling = model_sampling
        self.batch_slice = batch_slice
        self._hints: dict[int, torch.Tensor] = {}     # id(applied control) -> hint at the latent size
        self._features: dict[tuple, dict] = {}         # T2I-adapter outputs by (control, size, rows)

    def _sigma_range(self, c: AppliedControl) -> tuple[float, float]:
        ms = self.model_sampling
        return ms.percent_to_sigma(c.start_percent), ms.percent_to_sigma(c.end_percent)

    def _hint(self, c: AppliedControl, x: torch.Tensor, chunks: int, dtype: torch.dtype) -> torch.Tensor:
        from diffmesh.nodes.image import common_upscale

        h, w = x.shape[-2] * 8, x.shape[-1] * 8
        hint = self._hints.get(id(c))
        if hint is None or hint.shape[-2:] != (h, w):
            hint = common_upscale(c.hint.float(), w, h, "nearest-exact", "center")
            self._hints[id(c)] = hint
        return broadcast_hint(hint, x.shape[0], chunks, self.batch_slice).to(x.device, dtype)

    def _adapter_features(self, c: AppliedControl, network, x: torch.Tensor, chunks: int) -> dict[str, list]:
        """A T2I-adapter sees only the hint: evaluated once per hint size and row count, then reused.
        The hint is scaled to the latent size x 8 rounded up to the adapter's unshuffle factor, and
        averaged to one channel for one-channel adapters (ComfyUI's T2IAdapter.get_control)."""
        from diffmesh.nodes.image import common_upscale

        n = network.unshuffle_amount
        w = math.ceil(x.shape[-1] * 8 / n) * n
        h = math.ceil(x.shape[-2] * 8 / n) * n
        key = (id(c), h, w, x.shape[0], chunks)
        if key not in self._features:
            hint = common_upscale(c.hint.float(), w, h, "nearest-exact", "center")
            if network.input_channels == 1 and hint.shape[1] > 1:
                hint = torch.mean(hint, 1, keepdim=True)
            self._features[key] = network(broadcast_hint(hint, x.shape[0], chunks, self.batch_slice))
        return {k: [None if f is None else f.to(x.device, x.dtype) for f in v] for k, v in self._features[key].items()}

    def control(self, c: AppliedControl, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                extra: dict[str, torch.Tensor], chunks: int) -> dict[str, list] | None:
        """The merged residuals of `c`'s chain for one UNet call on `x` (unscaled) at `sigma` (B,)."""
        previous = None
        if c.previous is not None:
            previous = self.control(c.previous, x, sigma, context, extra, chunks)
        high, low = self._sigma_range(c)
        if float(sigma[0]) > high or float(sigma[0]) < low:
            return previous
        network = self.networks[c.net]
        if network.kind == "t2i":
            return merge(self._adapter_features(c, network, x, chunks), previous, c.strength,
                         c.net.global_average_pooling)
        ms = self.model_sampling
        xc = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float()
        out = network(xc, t, context, self._hint(c, x, chunks, network.dtype), **extra)
        return merge(out, previous, c.strength, c.net.global_average_pooling)


def merge(control: dict[str, list], previous: dict[str, list] | None, strength: float,
          global_average_pooling: bool) -> dict[str, list]:
    """ComfyUI's `control_merge`: pool, scale by strength, then add the earlier controls' residuals."""
    out: dict[str, list] = {"input": [], "middle": [], "output": []}
    for key, values in control.items():
        for x in values:
            if x is not None:
                if global_average_pooling:
                    x = torch.mean(x, dim=(2, 3), keepdim=True).repeat(1, 1, x.shape[2], x.shape[3])
                x = x * strength
            out[key].append(x)
    if previous is not None:
        for key in ("input", "middle", "output"):
            o = out[key]
            for i, prev in enumerate(previous[key]):
                if i >= len(o):
                    o.append(prev)
                elif prev is not None:
                    o[i] = prev if o[i] is None else prev + o[i]
    return out

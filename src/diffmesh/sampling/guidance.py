"""The denoiser D(x, sigma): conditioning, classifier-free guidance and the inpaint mask.

Classifier-free guidance (Ho & Salimans 2022): `uncond + (cond - uncond) * cfg`, evaluated in x0
space as ComfyUI does. Several CONDITIONING entries (ConditioningCombine, ConditioningSetArea,
masks) are each evaluated and averaged with per-pixel weights; entries with compatible shapes run
in one UNet call. The order of entries in a call, of accumulation and of the final combination
follows ComfyUI's `calc_cond_batch`, so results match it number for number.

CFG parallel: with `cfg_part` = "cond" | "uncond" and an `exchange`, this process evaluates only
its half; `exchange(local_pred) -> (cond_pred, uncond_pred)` gives both halves to both processes,
which then combine them with the same operations as the single-device path.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .conds import prepare_conds, repeat_to_batch_size

COND, UNCOND = 0, 1


class _Chunk:
    """One conditioning entry prepared for one evaluation: cropped input, weights, model inputs."""

    __slots__ = ("input_x", "mult", "context", "extra", "area", "control")

    def __init__(self, input_x, mult, context, extra, area, control=None):
        self.input_x, self.mult, self.context, self.extra, self.area = input_x, mult, context, extra, area
        self.control = control          # sampling.control.AppliedControl: batched only with the same object


def _rows(t: torch.Tensor, batch: int, batch_slice, device) -> torch.Tensor:
    """Repeat a per-sample tensor to the (full) batch, then keep this worker's rows."""
    if batch_slice is None:
        return repeat_to_batch_size(t, batch).to(device)
    start, stop, total = batch_slice
    return repeat_to_batch_size(t, total)[start:stop].to(device)


def _full_batch(t: torch.Tensor | None, batch_slice) -> torch.Tensor | None:
    """This worker's rows placed in a zero tensor of the full batch, so that per-entry model inputs
    built from them (`extra_conds`) line up with `_rows`' slicing."""
    if t is None or batch_slice is None:
        return t
    start, stop, total = batch_slice
    full = t.new_zeros((total,) + tuple(t.shape[1:]))
    full[start:stop] = t
    return full


def _can_concat(a: _Chunk, b: _Chunk) -> bool:
    if a.input_x.shape != b.input_x.shape or a.control is not b.control:
        return False
    s1, s2 = a.context.shape, b.context.shape
    if s1 != s2:
        if s1[0] != s2[0] or s1[2] != s2[2]:
            return False
        if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:   # padding costs more than it saves
            return False
    if a.extra.keys() != b.extra.keys():
        return False
    return all(a.extra[k].shape == b.extra[k].shape for k in a.extra)


def _cat_context(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate cross-attention contexts; shorter ones are repeated to the LCM token length
    (repeating the whole token sequence leaves attention output unchanged)."""
    length = 0
    for c in contexts:
        length = c.shape[1] if length == 0 else math.lcm(length, c.shape[1])
    out = [c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in contexts]
    return torch.cat(out)


class Denoiser:
    """x -> D(x, sigma) with CFG, the k-diffusion `model` argument of every sampler.

    `last_uncond` holds the uncond prediction of the latest call (CFG++ samplers read it; they
    set `keep_uncond = True` so that cfg == 1 still evaluates the uncond)."""

    def __init__(self, model, positive: list, negative: list, cfg: float, x_shape, *,
                 batch_slice=None, cfg_part: str | None = None, exchange: Callable | None = None,
                 latent_image: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 denoise_mask: torch.Tensor | None = None, controls=None, seed: int | None = None,
                 mask_function: Callable | None = None):
        self.model = model
        self.controls = controls        # sampling.control.ControlRunner when an entry carries a ControlNet
        self.model_sampling = model.model_sampling
        self.cfg = float(cfg)
        self.batch_slice = batch_slice
        if cfg_part not in (None, "cond", "uncond"):
            raise ValueError(f"cfg_part must be 'cond', 'uncond' or None, got {cfg_part!r}")
        self.cfg_part, self.exchange = cfg_part, exchange
        full_shape = tuple(x_shape) if batch_slice is None else (int(batch_slice[2]),) + tuple(x_shape[1:])
        sampler_inputs = {"latent_image": _full_batch(latent_image, batch_slice),
                          "denoise_mask": _full_batch(denoise_mask, batch_slice)}
        self.conds = prepare_conds({"positive": positive, "negative": negative}, model, full_shape,
                                   self.model_sampling, seed=seed, sampler_inputs=sampler_inputs)
        self.latent_image, self.noise, self.denoise_mask = latent_image, noise, denoise_mask
        self.mask_function = mask_function      # the MODEL's denoise-mask function (sampling.mask_functions)
        self.keep_uncond = False
        self.last_uncond: torch.Tensor | None = None

    # ---------------------------------------------------------------- one UNet call
    def apply_model(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                    extra: dict[str, torch.Tensor], control=None, chunks: int = 1) -> torch.Tensor:
        ms = self.model_sampling
        residuals = None
        if control is not None:
            if self.controls is None:
                raise RuntimeError("the conditioning carries a ControlNet but sampling got no ControlNet networks; "
                                   "run it through the engine (Worker.sample) or pass run_sample_job(control_networks=)")
            residuals = self.controls.control(control, x, sigma, context, extra, chunks)
        xc = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float()
        if self.denoise_mask is not None and getattr(self.model, "mask_sets_timestep", False):
            extra = {**extra, "denoise_mask": repeat_to_batch_size(self.denoise_mask, x.shape[0])}
        if residuals is not None:
            out = self.model(xc, t, context, control=residuals, **extra).float()
        else:
            out = self.model(xc, t, context, **extra).float()
        return ms.calculate_denoised(sigma, out, x)

    # ---------------------------------------------------------------- entries -> chunks
    def _chunk(self, entry: dict, x: torch.Tensor, sigma: torch.Tensor) -> _Chunk | None:
        if "timestep_start" in entry and sigma[0] > entry["timestep_start"]:
            return None
        if "timestep_end" in entry and sigma[0] < entry["timestep_end"]:
            return None
        area = entry.get("area")
        input_x = x
        if area is not None:
            area = list(area)
            for i in range(2):
                area[i] = min(x.shape[i + 2] - area[2 + i], area[i])
                input_x = input_x.narrow(i + 2, area[2 + i], area[i])
        strength = entry.get("strength", 1.0)
        if "mask" in entry:
            mask = entry["mask"].to(x.device)                        # (Bm, H, W) at latent size
            if self.batch_slice is not None:
                start, stop, total = self.batch_slice
                mask = mask[:total]
                mask = mask.repeat(total // mask.shape[0], 1, 1)[start:stop]
            else:
                mask = mask[:input_x.shape[0]]
            if area is not None:
                for i in range(2):
                    mask = mask.narrow(i + 1, area[2 + i], area[i])
            mask = mask * entry.get("mask_strength", 1.0)
            mask = mask.unsqueeze(1).repeat((input_x.shape[0] // mask.shape[0], input_x.shape[1], 1, 1))
        else:
            mask = torch.ones_like(input_x)
        mult = mask * strength
        if "mask" not in entry and area is not None:
            # feather the inner edges of an area over up to 8 latent pixels
            for i in range(2):
                rr = min(8, mult.shape[2 + i] // 4)
                if area[2 + i] != 0:
                    for t in range(rr):
                        m = mult.narrow(i + 2, t, 1)
                        m *= (1.0 / rr) * (t + 1)
                if (area[i] + area[2 + i]) < x.shape[i + 2]:
                    for t in range(rr):
                        m = mult.narrow(i + 2, area[i] - 1 - t, 1)
                        m *= (1.0 / rr) * (t + 1)
        batch = x.shape[0]
        context = _rows(entry["context"], batch, self.batch_slice, x.device)
        extra = {k: _rows(v, batch, self.batch_slice, x.device) for k, v in entry["extra"].items()}
        if area is not None and "c_concat" in extra:    # an inpainting UNet's channels follow the latent's area
            for i in range(2):
                extra["c_concat"] = extra["c_concat"].narrow(i + 2, area[2 + i], area[i])
        return _Chunk(input_x, mult, context, extra, area, entry.get("control"))

    def calc_cond_batch(self, conds: list, x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
        """Weighted average prediction per conds list (None = not evaluated, gives zeros)."""
        out_conds = [torch.zeros_like(x) for _ in conds]
        out_counts = [torch.ones_like(x) * 1e-37 for _ in conds]
        to_run = []
        for i, cond in enumerate(conds):
            for entry in cond or ():
                chunk = self._chunk(entry, x, sigma)
                if chunk is not None:
                    to_run.append((chunk, i))
        while to_run:
            first = to_run[0][0]
            batch_idx = [j for j in range(len(to_run)) if _can_concat(to_run[j][0], first)]
            batch_idx.reverse()          # ComfyUI pops from the back: uncond rows come first
            picked = [to_run.pop(j) for j in batch_idx]
            chunks = [p[0] for p in picked]
            n = len(chunks)
            input_x = torch.cat([c.input_x for c in chunks])
            context = _cat_context([c.context for c in chunks])
            extra = {k: torch.cat([c.extra[k] for c in chunks]) for k in chunks[0].extra}
            output = self.apply_model(input_x, torch.cat([sigma] * n), context, extra, first.control, n).chunk(n)
            for o, (chunk, index) in enumerate(picked):
                out_c, out_cts = out_conds[index], out_counts[index]
                if chunk.area is not None:
                    for i in range(2):
                        out_c = out_c.narrow(i + 2, chunk.area[2 + i], chunk.area[i])
                        out_cts = out_cts.narrow(i + 2, chunk.area[2 + i], chunk.area[i])
                out_c += output[o] * chunk.mult
                out_cts += chunk.mult
        for i in range(len(out_conds)):
            out_conds[i] /= out_counts[i]
        return out_conds

    # ---------------------------------------------------------------- guidance
    def guided(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        positive, negative = self.conds["positive"], self.conds["negative"]
        skip_uncond = math.isclose(self.cfg, 1.0) and not self.keep_uncond
        uncond = None if skip_uncond else negative
        if self.cfg_part is not None and self.exchange is not None and uncond is not None:
            mine = [positive, None] if self.cfg_part == "cond" else [None, uncond]
            local = self.calc_cond_batch(mine, x, sigma)[COND if self.cfg_part == "cond" else UNCOND]
            cond_pred, uncond_pred = self.exchange(local)
        else:
            cond_pred, uncond_pred = self.calc_cond_batch([positive, uncond], x, sigma)
        self.last_uncond = uncond_pred
        return uncond_pred + (cond_pred - uncond_pred) * self.cfg

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        """D(x, sigma) for sigma of shape (B,); the inpaint mask keeps known latent areas."""
        mask = self.denoise_mask
        if mask is None:
            return self.guided(x, sigma)
        if self.mask_function is not None:
            mask = self.mask_function(sigma, mask)
        latent_mask = 1.0 - mask
        s = sigma.reshape([sigma.shape[0]] + [1] * (self.noise.ndim - 1))
        known = self.model_sampling.noise_scaling(s, self.noise, self.latent_image)
        if getattr(self.model, "mask_sets_timestep", False):
            known = self.latent_image               # the known frames stay clean: the model sees them at t = 0
        x = x * mask + known * latent_mask
        out = self.guided(x, sigma)
        return out * mask + self.latent_image * latent_mask

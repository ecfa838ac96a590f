"""CONDITIONING -> the entries the denoiser evaluates (areas, masks, step ranges, model inputs).

A CONDITIONING value is ComfyUI's list `[[cond (1,T,D), {"pooled_output": ..., "area": ...}], ...]`.
Before sampling each entry is resolved once, as ComfyUI's `process_conds` does: percentage areas
become latent-pixel areas, masks are resized to the latent, start/end percents become sigmas,
model-specific extra inputs (SDXL `text_embeds` / `time_ids`) are computed, and every area entry
on one side gets a same-area partner on the other side, so that guidance inside an area compares
like with like.
"""

from __future__ import annotations

import math

import torch


def repeat_to_batch_size(t: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    if t.shape[dim] > batch_size:
        return t.narrow(dim, 0, batch_size)
    if t.shape[dim] < batch_size:
        reps = [1] * t.ndim
        reps[dim] = math.ceil(batch_size / t.shape[dim])
        return t.repeat(reps).narrow(dim, 0, batch_size)
    return t


def _mask_bounds(mask: torch.Tensor):
    """(H, W, Y, X) bounding box of the non-zero part of a (1, H, W) mask, at least 8x8; None if empty."""
    nz = torch.nonzero(mask[0])
    if nz.numel() == 0:
        return None
    y0, x0 = int(nz[:, 0].min()), int(nz[:, 1].min())
    y1, x1 = int(nz[:, 0].max()), int(nz[:, 1].max())
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def _resolve_area_and_mask(entry: dict, h: int, w: int) -> dict:
    area = entry.get("area")
    if area is not None and area[0] == "percentage":
        entry["area"] = (max(1, round(area[1] * h)), max(1, round(area[2] * w)),
                         round(area[3] * h), round(area[4] * w))
    elif area is not None:
        entry["area"] = tuple(int(a) for a in area[:4])
    if "mask" in entry:
        mask = entry["mask"].float()
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) != (h, w):
            mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(h, w), mode="bilinear").squeeze(1)
        if entry.get("set_area_to_bounds", False):
            bounds = torch.max(torch.abs(mask), dim=0).values.unsqueeze(0)
            box = _mask_bounds(bounds)
            entry["area"] = (8, 8, 0, 0) if box is None else box
        entry["mask"] = mask
    return entry


def _area_inside(a, outer) -> bool:
    return a[2] >= outer[2] and a[3] >= outer[3] and \
        a[0] + a[2] <= outer[0] + outer[2] and a[1] + a[3] <= outer[1] + outer[3]


def _add_same_area_partner(entries: list, c: dict) -> None:
    """If `c` has an area, give the other side an entry with that area whose model inputs come
    from the smallest of its entries covering the area (or one without area)."""
    if "area" not in c:
        return
    smallest = None
    for x in entries:
        if "area" in x:
            if _area_inside(c["area"], x["area"]):
                if smallest is None or "area" not in smallest:
                    smallest = x
                elif smallest["area"][0] * smallest["area"][1] > x["area"][0] * x["area"][1]:
                    smallest = x
        elif smallest is None:
            smallest = x
    if smallest is None:
        return
    if "area" in smallest and tuple(smallest["area"]) == tuple(c["area"]):
        return
    out = dict(c)
    out["context"], out["extra"] = smallest["context"], smallest["extra"]
    entries.append(out)


def _refuse_unrun(options: dict, model) -> None:
    """GLIGEN boxes on a model that cannot run them would be silently ignored: stop and say so."""
    if "gligen" in options and not getattr(model, "runs_gligen", False):
        raise NotImplementedError("GLIGENTextBoxApply's boxes run on SD UNets only (ComfyUI's GLIGEN models are "
                                  "SD1.x); remove the GLIGENTextBoxApply nodes or use an SD1.x checkpoint")


def prepare_conds(conds: dict[str, list], model, x_shape, model_sampling, seed: int | None = None,
                  sampler_inputs: dict | None = None) -> dict[str, list[dict]]:
    """{"positive": CONDITIONING, "negative": CONDITIONING} -> {"positive": [entry], ...}.

    An entry is a dict with "context" (1,T,D), "extra" {name: tensor} and the options that shape
    its weight: area (h, w, y, x) in latent pixels, strength, mask (Bm,h,w), mask_strength,
    timestep_start/timestep_end (sigmas). `sampler_inputs` (the sampler's `latent_image` and
    `denoise_mask`, full batch) reach the model's extra_conds as ComfyUI's process_conds passes them."""
    h, w = int(x_shape[-2]), int(x_shape[-1])          # 5-D video latents: (B, C, T, h, w)
    out: dict[str, list[dict]] = {}
    for key, conditioning in conds.items():
        entries = []
        for item in conditioning or ():
            tensor, options = item[0], dict(item[1]) if len(item) > 1 else {}
            _refuse_unrun(options, model)
            entry = {k: v for k, v in options.items()
                     if k in ("area", "strength", "mask", "mask_strength", "set_area_to_bounds", "control",
                              "control_apply_to_uncond")}
            entry = _resolve_area_and_mask(entry, h, w)
            if "start_percent" in options:
                entry["timestep_start"] = model_sampling.percent_to_sigma(options["start_percent"])
            if "end_percent" in options:
                entry["timestep_end"] = model_sampling.percent_to_sigma(options["end_percent"])
            params = dict(options)
            params.setdefault("width", w * 8)
            params.setdefault("height", h * 8)
            if seed is not None:            # the sampler's seed (unCLIP noise augmentation draws from it)
                params.setdefault("seed", seed)
            for name, value in (sampler_inputs or {}).items():
                if value is not None:
                    params.setdefault(name, value)
            extra_fn = getattr(model, "extra_conds", None)
            extra = extra_fn(params, tuple(x_shape)) if extra_fn is not None else {}
            entry["context"] = tensor.float()
            entry["extra"] = {k: v for k, v in (extra or {}).items() if v is not None}
            entries.append(entry)
        out[key] = entries
    for key in list(out):
        for c in out[key]:
            for other in out:
                if other != key:
                    _add_same_area_partner(out[other], c)
    if "positive" in out:
        applied = [c for c in out["positive"] if c.get("control_apply_to_uncond", False)]
        for key in out:
            if key != "positive":
                _share_control(applied, out[key])
    return out


def _share_control(conds: list[dict], uncond: list[dict]) -> None:
    """The old ControlNetApply also controls the negative side (ComfyUI's `apply_empty_x_to_equal_area`):
    when no negative entry without area has a control, the i-th controlled positive entry's control
    goes onto a copy of the (i mod n)-th negative entry without area, which replaces that entry."""
    cond_controls = [c["control"] for c in conds if "area" not in c and c.get("control") is not None]
    others = []
    for i, c in enumerate(uncond):
        if "area" not in c:
            if c.get("control") is not None:
                return
            others.append((c, i))
    if not others:
        return
    for i, control in enumerate(cond_controls):
        entry, index = others[i % len(others)]
        uncond[index] = dict(entry, control=control)

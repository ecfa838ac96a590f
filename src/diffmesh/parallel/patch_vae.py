"""The VAE across devices, engine side: one image's decode / encode split in bands of rows
(`parallel.patch`: halo convolutions, global GroupNorm, full keys and values in the mid-block
attention, so the same numbers as one device), and VAEDecodeTiled / VAEEncodeTiled with their tiles
dealt out over the workers (`models.vae_tiles`: every tile is computed as on one device and the
blend happens once, here, so the result is the one-device tiled result).

When (`run_vae`): the scope has two or more workers, the VAE has no pinned device, it is an SD / SDXL
/ Flux AutoencoderKL or the Wan video VAE (Wan 2.1 / 2.2, Qwen-Image: bands of rows over every frame,
`parallel.patch_wan`; its tiled decode stays on one worker), and `--parallel` is auto or patch (tiles
also under batch). Bands: a single image or video (auto; any batch under patch) with at least
MIN_PATCH_ROWS latent rows per worker in auto (MIN_VIDEO_ROWS for the video VAE, whose every row costs
all the frames' work). Otherwise the engine's batch split or one worker runs it (None is returned).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from diffmesh.engine.planner import MIN_PATCH_ROWS
from diffmesh.errors import WorkerDied
from diffmesh.parallel.request import plain_handle

VAE_FAMILIES = ("sd1", "sd2", "sd2v", "sdxl", "flux")     # AutoencoderKL VAEs (models.vae.VAE)
VIDEO_VAE_FAMILIES = ("wan21", "wan22", "qwenimage")       # the Wan causal 3-D VAE (models.vae_wan.WanVAE)
VAE_SCALE = 8                                              # their pixel-to-latent factor (Wan 2.2: 16)
MIN_VIDEO_ROWS = 8                                         # latent rows per worker for the video VAE in auto
log = logging.getLogger("diffmesh.parallel.patch_vae")


def _workers(scope: Any, vae: Any) -> list[int]:
    main = scope.worker_for(vae)
    return [main] + [w for w in scope.worker_ids if w != main]


def run_vae(scope: Any, vae: Any, tensor: torch.Tensor, tiling: dict | None, encode: bool) -> torch.Tensor | None:
    """Decode (latents) or encode (images) spread over the scope's workers, or None when this does
    not apply (see the module doc)."""
    mode = scope.root.parallel
    video = vae.family in VIDEO_VAE_FAMILIES
    image = vae.family in VAE_FAMILIES and tensor.ndim == 4
    if (len(scope.worker_ids) < 2 or vae.device not in (None, "", "default") or not (image or video)
            or mode not in ("auto", "patch", "batch")):
        return None
    workers = _workers(scope, vae)
    if tiling:
        return _spread_tiles(scope, vae, tensor, tiling, encode, workers) if image else None
    items = 1 if video and encode else tensor.shape[0]       # a video encode's images are one clip's frames
    if mode == "batch" or (mode == "auto" and items > 1):
        return None
    # latent rows (an encode counts the Wan 2.2 VAE's 16 pixel rows per latent row for every video VAE)
    rows = tensor.shape[1] // (2 * VAE_SCALE if video else VAE_SCALE) if encode else tensor.shape[-2]
    minimum = (MIN_VIDEO_ROWS if video else MIN_PATCH_ROWS) if mode == "auto" else 1
    count = min(len(workers), rows // minimum)
    if count < 2:
        return None
    return _split_bands(scope, vae, tensor, encode, workers[:count])


def _spread_tiles(scope, vae, tensor, tiling, encode, workers) -> torch.Tensor:
    from diffmesh.models.vae import finish_decode
    from diffmesh.models.vae_tiles import blend

    handle, call = plain_handle(vae), scope.root.executor.call
    part = {**tiling, "encode": encode}
    futures = [call(w, "vae_tiles", handle, tensor, dict(part, rank=r, world=len(workers)))
               for r, w in enumerate(workers)]
    results = []
    for (w, future) in zip(workers, futures):
        try:
            results.append(future.result())
        except WorkerDied as exc:          # its tiles run once more on the main worker
            log.warning("%s; its VAE tiles run on worker %s", exc, workers[0])
            results.append(call(workers[0] if w != workers[0] else workers[1], "vae_tiles", handle, tensor,
                                dict(part, rank=workers.index(w), world=len(workers))).result())
    plan = results[0]["plan"]
    pieces = {i: piece for result in results for i, piece in result["pieces"].items()}
    out = blend(plan, pieces)
    return out if encode else finish_decode(out)


def _split_bands(scope, vae, tensor, encode, workers) -> torch.Tensor:
    method = "vae_encode" if encode else "vae_decode"
    handle, call = plain_handle(vae), scope.root.executor.call
    groups = scope.root.sequence_groups
    group = groups.group(tuple(workers))
    futures = [call(w, method, handle, tensor, patch={"group": group.group, "rank": r, "world": len(workers)})
               for r, w in enumerate(workers)]
    outcomes = []
    for future in futures:
        try:
            outcomes.append((future.result(), None))
        except BaseException as exc:  # noqa: BLE001 - sorted below, after every member finished
            outcomes.append((None, exc))
    errors = [e for _, e in outcomes if e is not None]
    if not errors:                                   # bands in rank order: latent rows, or image rows
        return torch.cat([r for r, _ in outcomes], dim=-2 if encode else 1)
    groups.drop(group)
    if not any(isinstance(e, WorkerDied) for e in errors):
        raise errors[0]
    log.warning("%s; the VAE runs once more on one worker", errors[0])
    return scope._call_once_retried(workers[0], method, handle, tensor)

"""The extra input channels of inpainting UNets (SD1.5/SD2/SDXL inpainting checkpoints).

Such a UNet's first convolution takes more channels than the latent has (9 = 4 + 1 + 4 for SD1.5
inpainting); ComfyUI detects it from that shape (`in_channels > 4`, `set_inpaint`) and concatenates
`[mask, masked-image latent]` after the latent on every call (`BaseModel.concat_cond`, keys
"mask", "masked_image"). The mask is the conditioning's `concat_mask` (InpaintModelConditioning) or
else the sampler's denoise mask; the image is the conditioning's `concat_latent_image` (scaled into
diffusion space) or else the sampler's latent. Without any mask ComfyUI feeds an all-ones mask and
the latent of a blank image; a checkpoint without extra channels ignores all of this.
"""

from __future__ import annotations

import math

import torch

# ComfyUI's blank_inpaint_image_like: the SD VAE latent of a zero (black) image, per channel.
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def resize_to_batch_size(t: torch.Tensor, batch: int) -> torch.Tensor:
    """ComfyUI's utils.resize_to_batch_size: pick rows by nearest index (not by repeating)."""
    n = t.shape[0]
    if n == batch:
        return t
    if batch <= 1:
        return t[:batch]
    if batch < n:
        scale = (n - 1) / (batch - 1)
        index = [min(round(i * scale), n - 1) for i in range(batch)]
    else:
        scale = n / batch
        index = [min(math.floor((i + 0.5) * scale), n - 1) for i in range(batch)]
    return t[index]


def _to_latent_size(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resize with ComfyUI's "center" crop (common_upscale) when the size differs."""
    if tuple(t.shape[-2:]) == (h, w):
        return t
    from diffmesh.nodes.image import common_upscale

    return common_upscale(t, w, h, "bilinear", "center")


def concat_cond(options: dict, x_shape: tuple, latent_format) -> torch.Tensor:
    """(B, 1 + C, h, w): [mask, masked-image latent] for a 4-D latent of shape `x_shape`.

    `options` is the conditioning entry's options plus the sampler's `latent_image` (already in
    diffusion space) and `denoise_mask` (prepared, (B,C,h,w)) when it has them."""
    b, c, h, w = (int(s) for s in x_shape)
    mask = options.get("concat_mask", options.get("denoise_mask"))
    image = options.get("concat_latent_image")
    if image is None:
        image = options.get("latent_image")
    else:
        image = latent_format.process_in(image.float())
    if mask is None:
        blank = torch.tensor(BLANK_INPAINT_LATENT[:c] + (1.0,) * max(0, c - 4)).reshape(1, c, 1, 1)
        return torch.cat([torch.ones((b, 1, h, w)), blank.expand(b, c, h, w)], dim=1)
    if image is None:
        image = torch.zeros((b, c, h, w))
    image = resize_to_batch_size(_to_latent_size(image.float().cpu(), h, w), b)
    mask = mask.float().cpu()
    if mask.ndim == 4:
        mask = mask[:, :1]
    mask = _to_latent_size(mask.reshape((-1, 1) + tuple(mask.shape[-2:])), h, w)
    mask = resize_to_batch_size(mask.round(), b)
    return torch.cat([mask, image], dim=1)

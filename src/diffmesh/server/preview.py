"""Cheap approximate latent previews during sampling (spec §6.11): latent2rgb, JPEG."""

from __future__ import annotations

import io
from typing import Any

# SD1.x factors (4 latent channels → RGB, no bias), used when the latent format gives none.
SD15_LATENT_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                   (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
ENABLED_METHODS = ("auto", "latent2rgb", "taesd")  # taesd falls back to latent2rgb here


def resolve_method(extra_data: dict, server_default: str) -> str:
    """The prompt's `preview_method` unless absent or `default`, else the server flag."""
    asked = extra_data.get("preview_method")
    if not asked or asked == "default":
        return server_default
    return str(asked)


def latent_rgb_factors(latent_format: Any, channels: int) -> tuple[Any, Any] | None:
    """(factors C×3, bias 3 or None) from a latent format object or name, else SD1.x for 4 channels."""
    fmt = latent_format
    if isinstance(fmt, str):
        try:
            from diffmesh.sampling import latent_formats
        except ImportError:
            fmt = None
        else:
            fmt = getattr(latent_formats, fmt, None)
            fmt = fmt() if isinstance(fmt, type) else fmt
    factors = getattr(fmt, "latent_rgb_factors", None) if fmt is not None else None
    bias = getattr(fmt, "latent_rgb_factors_bias", None) if fmt is not None else None
    if factors is None:
        if channels != 4:
            return None
        factors = SD15_LATENT_RGB
    return factors, bias


def latent_to_jpeg(x0: Any, max_size: int = 512, latent_format: Any = None) -> bytes | None:
    """x0 (B,C,h,w) in the scaled latent space → JPEG of batch item 0, fit in `max_size`²."""
    import torch
    from PIL import Image, ImageOps

    latent = x0[0] if x0.ndim == 4 else x0  # (C,h,w)
    found = latent_rgb_factors(latent_format, latent.shape[0])
    if found is None:
        return None
    factors, bias = found
    weight = torch.as_tensor(factors, dtype=torch.float32)  # (C,3)
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), weight)  # (h,w,3)
    if bias is not None:
        rgb = rgb + torch.as_tensor(bias, dtype=torch.float32)
    pixels = (((rgb + 1.0) / 2.0).clamp(0, 1) * 255).to(torch.uint8).numpy()
    image = ImageOps.contain(Image.fromarray(pixels), (max_size, max_size), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def image_to_jpeg(image: Any, max_size: int = 512) -> bytes:
    """A PIL image (the executor's own approximation) → JPEG fit in `max_size`²."""
    from PIL import Image, ImageOps

    image = ImageOps.contain(image.convert("RGB"), (max_size, max_size), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def encode_node_image(image: Any, image_format: str, max_size: int | None) -> tuple[bytes, str]:
    """A node's own preview `(format, PIL image, max size or None)` as ComfyUI sends it: PNG or
    JPEG, fit in `max_size`² when given, else at the image's own size. (bytes, mime type)."""
    from PIL import Image, ImageOps

    if max_size is not None:
        image = ImageOps.contain(image, (max_size, max_size), Image.BILINEAR)
    fmt = "PNG" if image_format == "PNG" else "JPEG"
    if fmt == "JPEG":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format=fmt, quality=95, compress_level=1)
    return out.getvalue(), "image/png" if fmt == "PNG" else "image/jpeg"

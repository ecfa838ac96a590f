"""Latent-space formats: the VAE scale factor and the cheap latent -> RGB preview map.

The VAE latent of SD models is rescaled to unit variance before diffusion (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", scale factor 0.18215 for SD1/SD2,
0.13025 for SDXL). Previews use a fitted 4x3 linear map from latent channels to RGB, as ComfyUI's
`latent2rgb` preview method does, so users see the same previews.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SD15_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SDXL_RGB_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_RGB_BIAS = (0.1084, -0.0175, -0.0011)


@dataclass(frozen=True)
class LatentFormat:
    scale_factor: float
    channels: int = 4
    latent_rgb_factors: tuple = SD15_RGB_FACTORS
    bias: tuple | None = None
    taesd_decoder_name: str | None = None

    @property
    def latent_rgb_factors_bias(self):          # ComfyUI's attribute name
        return self.bias

    @property
    def latent_channels(self) -> int:           # ComfyUI's attribute name
        return self.channels

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor


FORMATS = {
    "sd1": LatentFormat(0.18215, 4, SD15_RGB_FACTORS, None, "taesd_decoder"),
    "sd2": LatentFormat(0.18215, 4, SD15_RGB_FACTORS, None, "taesd_decoder"),
    "sd2v": LatentFormat(0.18215, 4, SD15_RGB_FACTORS, None, "taesd_decoder"),
    "sdxl": LatentFormat(0.13025, 4, SDXL_RGB_FACTORS, SDXL_RGB_BIAS, "taesdxl_decoder"),
}


def for_family(family: str) -> LatentFormat:
    try:
        return FORMATS[family]
    except KeyError:
        raise ValueError(f"no latent format for model family {family!r}; known: {sorted(FORMATS)}") from None


def latent_to_rgb_preview(x0: torch.Tensor, fmt: LatentFormat):
    """Preview of batch item 0 of a scaled-space x0 (B,C,h,w) -> PIL image of size (w, h)."""
    from PIL import Image

    factors = torch.tensor(fmt.latent_rgb_factors, dtype=torch.float32)          # (C, 3)
    bias = torch.tensor(fmt.bias, dtype=torch.float32) if fmt.bias is not None else None
    lat = x0[0].detach().to("cpu", torch.float32)                                # (C, h, w)
    rgb = torch.einsum("chw,cr->hwr", lat, factors)                              # (h, w, 3)
    if bias is not None:
        rgb = rgb + bias
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1)
    arr = (rgb * 255.0).to(torch.uint8).numpy()
    return Image.fromarray(arr)

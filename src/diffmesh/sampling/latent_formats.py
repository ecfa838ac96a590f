"""Latent-space formats: the VAE scale factor and the cheap latent -> RGB preview map.

The 16-channel formats of the diffusion transformers also shift: Flux's VAE latent (also Z-Image's)
is `(x - 0.1159) * 0.3611`; the Wan 2.1 VAE latent (Wan, Qwen-Image) is normalised per channel,
`(x - mean_c) * scale / std_c`, and is 5-D (B, C, T, h, w). Values are ComfyUI's.

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
FLUX_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)
FLUX_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
WAN21_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
WAN21_RGB_BIAS = (-0.1835, -0.0868, -0.3360)
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# Wan 2.2 VAE (the TI2V 5B model's): 48 channels, ComfyUI's latent_formats.Wan22
WAN22_RGB_FACTORS = (
    (0.0119, 0.0103, 0.0046), (-0.1062, -0.0504, 0.0165), (0.014, 0.0409, 0.0491), (-0.0813, -0.0677, 0.0607),
    (0.0656, 0.0851, 0.0808), (0.0264, 0.0463, 0.0912), (0.0295, 0.0326, 0.059), (-0.0244, -0.027, 0.0025),
    (0.0443, -0.0102, 0.0288), (-0.0465, -0.009, -0.0205), (0.0359, 0.0236, 0.0082), (-0.0776, 0.0854, 0.1048),
    (0.0564, 0.0264, 0.0561), (0.0006, 0.0594, 0.0418), (-0.0319, -0.0542, -0.0637), (-0.0268, 0.0024, 0.026),
    (0.0539, 0.0265, 0.0358), (-0.0359, -0.0312, -0.0287), (-0.0285, -0.1032, -0.1237), (0.1041, 0.0537, 0.0622),
    (-0.0086, -0.0374, -0.0051), (0.039, 0.067, 0.2863), (0.0069, 0.0144, 0.0082), (0.0006, -0.0167, 0.0079),
    (0.0313, -0.0574, -0.0232), (-0.1454, -0.0902, -0.0481), (0.0714, 0.0827, 0.0447), (-0.0304, -0.0574, -0.0196),
    (0.0401, 0.0384, 0.0204), (-0.0758, -0.0297, -0.0014), (0.0568, 0.1307, 0.1372), (-0.0055, -0.031, -0.038),
    (0.0239, -0.0305, 0.0325), (-0.0663, -0.0673, -0.014), (-0.0416, -0.0047, -0.0023), (0.0166, 0.0112, -0.0093),
    (-0.0211, 0.0011, 0.0331), (0.1833, 0.1466, 0.225), (-0.0368, 0.037, 0.0295), (-0.3441, -0.3543, -0.2008),
    (-0.0479, -0.0489, -0.042), (-0.066, -0.0153, 0.08), (-0.0101, 0.0068, 0.0156), (-0.069, -0.0452, -0.0927),
    (-0.0145, 0.0041, 0.0015), (0.0421, 0.0451, 0.0373), (0.0504, -0.0483, -0.0356), (-0.0837, 0.0168, 0.0055),
)
WAN22_RGB_BIAS = (0.0317, -0.0878, -0.1388)
WAN22_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.157, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.052, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


@dataclass(frozen=True)
class LatentFormat:
    scale_factor: float
    channels: int = 4
    latent_rgb_factors: tuple = SD15_RGB_FACTORS
    bias: tuple | None = None
    taesd_decoder_name: str | None = None
    shift_factor: float = 0.0                  # Flux: subtracted before scaling
    latents_mean: tuple | None = None          # Wan 2.1: per-channel normalisation
    latents_std: tuple | None = None
    dimensions: int = 2                        # spatial(+time) dims of a latent: 3 for the Wan format

    @property
    def latent_rgb_factors_bias(self):          # ComfyUI's attribute name
        return self.bias

    @property
    def latent_channels(self) -> int:           # ComfyUI's attribute name
        return self.channels

    @property
    def latent_dimensions(self) -> int:         # ComfyUI's attribute name
        return self.dimensions

    def _stats(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels) + (1,) * (latent.ndim - 2)
        mean = torch.tensor(self.latents_mean, dtype=latent.dtype, device=latent.device).view(shape)
        std = torch.tensor(self.latents_std, dtype=latent.dtype, device=latent.device).view(shape)
        return mean, std

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE latent -> diffusion space (ComfyUI's operation order, so results match to the bit)."""
        if self.latents_mean is not None:
            mean, std = self._stats(latent)
            return (latent - mean) * self.scale_factor / std
        if self.shift_factor:
            return (latent - self.shift_factor) * self.scale_factor
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        if self.latents_mean is not None:
            mean, std = self._stats(latent)
            return latent * std / self.scale_factor + mean
        if self.shift_factor:
            return latent / self.scale_factor + self.shift_factor
        return latent / self.scale_factor


FORMATS = {
    "sd1": LatentFormat(0.18215, 4, SD15_RGB_FACTORS, None, "taesd_decoder"),
    "sd2": LatentFormat(0.18215, 4, SD15_RGB_FACTORS, None, "taesd_decoder"),
    "sd2v": LatentFormat(0.18215, 4, SD15_RGB_FACTORS, None, "taesd_decoder"),
    "sdxl": LatentFormat(0.13025, 4, SDXL_RGB_FACTORS, SDXL_RGB_BIAS, "taesdxl_decoder"),
    "flux": LatentFormat(0.3611, 16, FLUX_RGB_FACTORS, FLUX_RGB_BIAS, "taef1_decoder", shift_factor=0.1159),
    "wan21": LatentFormat(1.0, 16, WAN21_RGB_FACTORS, WAN21_RGB_BIAS, None, latents_mean=WAN21_MEAN,
                          latents_std=WAN21_STD, dimensions=3),
    "wan22": LatentFormat(1.0, 48, WAN22_RGB_FACTORS, WAN22_RGB_BIAS, None, latents_mean=WAN22_MEAN,
                          latents_std=WAN22_STD, dimensions=3),
}
# model families whose latent format has another name (the DiT families name theirs in models.dit)
FAMILY_FORMATS = {"zimage": "flux", "qwenimage": "wan21", "wan21": "wan21", "wan22": "wan22", "sd2unclip": "sd2"}


def for_family(family: str) -> LatentFormat:
    """The latent format of a model family id or a format name ("flux", "wan21")."""
    try:
        return FORMATS[FAMILY_FORMATS.get(family, family)]
    except KeyError:
        raise ValueError(f"no latent format for model family {family!r}; known: {sorted(FORMATS)}") from None


def latent_to_rgb_preview(x0: torch.Tensor, fmt: LatentFormat):
    """Preview of batch item 0 of a scaled-space x0 (B,C,h,w) -> PIL image of size (w, h)."""
    from PIL import Image

    factors = torch.tensor(fmt.latent_rgb_factors, dtype=torch.float32)          # (C, 3)
    bias = torch.tensor(fmt.bias, dtype=torch.float32) if fmt.bias is not None else None
    lat = x0[0].detach().to("cpu", torch.float32)                                # (C, h, w)
    if lat.ndim == 4:                                                            # (C, T, h, w): first frame
        lat = lat[:, 0]
    rgb = torch.einsum("chw,cr->hwr", lat, factors)                              # (h, w, 3)
    if bias is not None:
        rgb = rgb + bias
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1)
    arr = (rgb * 255.0).to(torch.uint8).numpy()
    return Image.fromarray(arr)

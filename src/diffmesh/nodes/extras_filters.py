"""Image filter nodes of ComfyUI's comfy_extras/nodes_post_processing.py with ComfyUI's names, inputs,
defaults and maths: Blend Images, Blur Image, Quantize Image, Sharpen Image. IMAGE is (B,H,W,C)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.extras_base import choice, outs, v3, v3_node
from diffmesh.nodes.image import common_upscale

POST = "comfy_extras.nodes_post_processing"
BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


def _soft_light_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend_modes(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    modes = {
        "normal": lambda: b,
        "multiply": lambda: a * b,
        "screen": lambda: 1 - (1 - a) * (1 - b),
        "overlay": lambda: torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
        "soft_light": lambda: torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (_soft_light_g(a) - a)),
        "difference": lambda: a - b,
    }
    if mode not in modes:
        raise ValueError(f"Unsupported blend mode: {mode}")
    return modes[mode]()


def image_blend(ctx: NodeContext, image1, image2, blend_factor: float, blend_mode: str):
    if image1.shape[-1] < image2.shape[-1]:
        image2 = image2[..., :image1.shape[-1]]
    elif image1.shape[-1] > image2.shape[-1]:
        image2 = F.pad(image2, (0, 1), value=1.0)
    if image1.shape != image2.shape:
        image2 = common_upscale(image2.permute(0, 3, 1, 2), image1.shape[2], image1.shape[1], "bicubic",
                                "center").permute(0, 2, 3, 1)
    blended = image1 * (1 - blend_factor) + blend_modes(image1, image2, blend_mode) * blend_factor
    return (torch.clamp(blended, 0, 1),)


def gaussian_kernel(size: int, sigma: float, dtype=torch.float32) -> torch.Tensor:
    """ComfyUI's kernel: a Gaussian of the distance over a [-1, 1] grid, normalised to sum 1."""
    x, y = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype)


def _convolve(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-channel convolution of (B,H,W,C) over a reflect-padded border."""
    channels = image.shape[-1]
    weights = kernel.repeat(channels, 1, 1).unsqueeze(1)
    padded = F.pad(image.permute(0, 3, 1, 2), (radius,) * 4, mode="reflect")
    return F.conv2d(padded, weights, groups=channels).permute(0, 2, 3, 1)


def image_blur(ctx: NodeContext, image, blur_radius: int, sigma: float):
    if blur_radius == 0:
        return (image,)
    return (_convolve(image, gaussian_kernel(blur_radius * 2 + 1, sigma, image.dtype), blur_radius),)


def image_sharpen(ctx: NodeContext, image, sharpen_radius: int, sigma: float, alpha: float):
    if sharpen_radius == 0:
        return (image,)
    kernel = gaussian_kernel(sharpen_radius * 2 + 1, sigma, image.dtype) * -(alpha * 10)
    kernel[sharpen_radius, sharpen_radius] = kernel[sharpen_radius, sharpen_radius] - kernel.sum() + 1.0
    return (torch.clamp(_convolve(image, kernel, sharpen_radius), 0, 1),)


def _bayer_matrix(n: int) -> np.ndarray:
    """The normalised Bayer matrix of order 2**n (recursive, as ComfyUI builds it)."""
    if n == 0:
        return np.zeros((1, 1), "float32")
    q = 4 ** n
    m = q * _bayer_matrix(n - 1)
    return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q


def _bayer(picture: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    spread = 2 * 256 / (len(palette.getpalette()) // 3)
    matrix = torch.from_numpy(spread * _bayer_matrix(int(math.log2(order))) + 0.5)
    pixels = torch.from_numpy(np.array(picture).astype(np.float32))
    tiled = matrix.tile(math.ceil(pixels.shape[0] / matrix.shape[0]),
                        math.ceil(pixels.shape[1] / matrix.shape[1])).unsqueeze(-1)
    pixels.add_(tiled[:pixels.shape[0], :pixels.shape[1]]).clamp_(0, 255)
    return Image.fromarray(pixels.to(torch.uint8).numpy()).quantize(palette=palette, dither=Image.Dither.NONE)


def image_quantize(ctx: NodeContext, image, colors: int, dither: str):
    result = torch.zeros_like(image)
    for b in range(image.shape[0]):
        picture = Image.fromarray((image[b] * 255).to(torch.uint8).numpy(), mode="RGB")
        palette = picture.quantize(colors=colors)          # a palette first (Pillow issue 5836)
        if dither.startswith("bayer"):
            quantized = _bayer(picture, palette, int(dither.split("-")[-1]))
        else:
            method = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
            quantized = picture.quantize(palette=palette, dither=method)
        result[b] = torch.tensor(np.array(quantized.convert("RGB"))).float() / 255
    return (result,)


NODES = (
    v3_node("ImageBlend", "Blend Images", "image/filters",
            (v3("image1", "IMAGE"), v3("image2", "IMAGE"),
             v3("blend_factor", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01), choice("blend_mode", BLEND_MODES)),
            outs("IMAGE"), image_blend, POST, essentials_category="Image Tools", search_aliases=("mix images",)),
    v3_node("ImageBlur", "Blur Image", "image/filters",
            (v3("image", "IMAGE"), v3("blur_radius", "INT", default=1, min=1, max=31, step=1),
             v3("sigma", "FLOAT", default=1.0, min=0.1, max=10.0, step=0.1)),
            outs("IMAGE"), image_blur, POST),
    v3_node("ImageQuantize", "Quantize Image", "image/filters",
            (v3("image", "IMAGE"), v3("colors", "INT", default=256, min=1, max=256, step=1), choice("dither", DITHERS)),
            outs("IMAGE"), image_quantize, POST),
    v3_node("ImageSharpen", "Sharpen Image", "image/filters",
            (v3("image", "IMAGE"), v3("sharpen_radius", "INT", advanced=True, default=1, min=1, max=31, step=1),
             v3("sigma", "FLOAT", advanced=True, default=1.0, min=0.1, max=10.0, step=0.01),
             v3("alpha", "FLOAT", advanced=True, default=1.0, min=0.0, max=5.0, step=0.01)),
            outs("IMAGE"), image_sharpen, POST),
)

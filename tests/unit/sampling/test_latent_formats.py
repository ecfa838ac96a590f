"""Latent formats of the transformer families: ComfyUI's constants and operation order, previews."""

import torch

from diffmesh.sampling.latent_formats import for_family, latent_to_rgb_preview


def test_flux_format_shifts_then_scales():
    fmt = for_family("flux")
    x = torch.randn(1, 16, 4, 4)
    assert fmt.channels == 16 and fmt.scale_factor == 0.3611 and fmt.shift_factor == 0.1159
    assert torch.equal(fmt.process_in(x), (x - 0.1159) * 0.3611)
    assert torch.equal(fmt.process_out(x), x / 0.3611 + 0.1159)
    assert for_family("zimage") is fmt


def test_wan21_format_normalises_each_channel_of_a_5d_latent():
    fmt = for_family("qwenimage")
    assert fmt is for_family("wan21") and fmt.dimensions == 3
    x = torch.randn(1, 16, 2, 3, 3)
    mean = torch.tensor(fmt.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(fmt.latents_std).view(1, 16, 1, 1, 1)
    assert torch.equal(fmt.process_in(x), (x - mean) * 1.0 / std)
    assert torch.allclose(fmt.process_out(fmt.process_in(x)), x, atol=1e-5)
    assert (fmt.latents_mean[0], fmt.latents_std[15]) == (-0.7571, 1.9160)


def test_sd_formats_are_unchanged():
    x = torch.randn(1, 4, 2, 2)
    assert torch.equal(for_family("sd1").process_in(x), x * 0.18215)
    assert torch.equal(for_family("sdxl").process_out(x), x / 0.13025)


def test_previews_of_16_channel_and_5d_latents():
    image = latent_to_rgb_preview(torch.randn(2, 16, 6, 5), for_family("flux"))
    assert image.size == (5, 6)
    video = latent_to_rgb_preview(torch.randn(1, 16, 3, 4, 7), for_family("wan21"))
    assert video.size == (7, 4)

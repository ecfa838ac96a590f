"""An SD1 inpainting UNet (9-channel conv_in) under exact patch parallel: its concat channels (mask
and masked-image latent) are split in the same bands as the latent, so 2 CPU worker processes give
one device's result."""

from __future__ import annotations

import torch

from diffmesh.engine.engine import Engine
from diffmesh.models.handle import ModelHandle
from diffmesh.models.testmodels_inpaint import write_sd1_inpaint
from diffmesh.sampling.job import SampleJob


def test_patch_parallel_inpainting_unet_matches_single_device(two_workers, reference_engine, tmp_path):
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    path = write_sd1_inpaint(tmp_path / "inpaint.safetensors")
    clip = ModelHandle(path, "clip", "sd1")
    positive = reference_engine.encode_text(clip, "a photo of a cat")
    negative = reference_engine.encode_text(clip, "blurry")
    g = torch.Generator().manual_seed(1)
    image, mask = torch.randn(1, 4, 24, 12, generator=g), torch.zeros(1, 1, 192, 96)
    mask[..., 40:150, 20:70] = 1.0
    concat = {"concat_latent_image": image, "concat_mask": mask}
    positive = [[c, {**o, **concat}] for c, o in positive]
    negative = [[c, {**o, **concat}] for c, o in negative]
    latent = torch.randn(1, 4, 24, 12, generator=g)
    sigmas = ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", 3, 1.0)
    job = SampleJob(latent=latent, noise=prepare_noise(latent, 42, None), sigmas=sigmas, sampler_name="euler",
                    cfg=5.0, positive=positive, negative=negative, seed=42, noise_mask=mask[0])
    unet = ModelHandle(path, "unet", "sd1")
    engine = Engine(two_workers, parallel="patch")
    result = engine.sample(unet, job)
    assert engine.last_plan.strategy == "patch"
    expected = reference_engine.sample(unet, job)
    assert ((result - expected).norm() / expected.norm()).item() < 1e-5

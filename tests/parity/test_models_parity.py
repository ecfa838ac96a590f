"""Text encoding and VAE decode of the full-size random SD1.5 against ComfyUI's recorded run."""

import pytest
import torch
from safetensors.torch import load_file

from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import WeightStore, build_component

pytestmark = pytest.mark.slow

POSITIVE = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


@pytest.fixture(scope="module")
def components(reference_dir):
    return load_file(str(reference_dir / "sd15_256_euler" / "components.safetensors"))


@pytest.fixture(scope="module")
def store():
    return WeightStore()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_tokens_match_reference(sd15_full_checkpoint, components, store):
    enc = build_component(ModelHandle(str(sd15_full_checkpoint), "clip", "sd1"), "cpu", "fp32", store)
    for text, key in ((POSITIVE, "tokens_pos"), (NEGATIVE, "tokens_neg")):
        ids = [int(t) for t, _w in enc.tokenize(text)[0]]
        assert ids == components[key].tolist()


def test_text_conditioning_and_pooled_match_reference(sd15_full_checkpoint, components, store):
    enc = build_component(ModelHandle(str(sd15_full_checkpoint), "clip", "sd1"), "cpu", "fp32", store)
    for text, suffix in ((POSITIVE, "pos"), (NEGATIVE, "neg")):
        [[cond, opts]] = enc.encode(text)
        assert cond.shape == components[f"cond_{suffix}"].shape
        assert _rel(cond, components[f"cond_{suffix}"]) < 1e-4
        assert _rel(opts["pooled_output"], components[f"pooled_{suffix}"]) < 1e-4


def test_vae_decode_of_final_latent_matches_reference_image(sd15_full_checkpoint, components, store):
    vae = build_component(ModelHandle(str(sd15_full_checkpoint), "vae", "sd1"), "cpu", "fp32", store)
    image = vae.decode(components["latent_final"])
    ref = components["image_float"]
    assert image.shape == ref.shape
    mse = float(((image - ref) ** 2).mean())
    psnr = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20)))
    assert psnr >= 40.0

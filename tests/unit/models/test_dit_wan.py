"""Wan 2.1 transformer on tiny random models: detection, configs from shapes, shapes and padding, I2V inputs."""

import pytest
import torch

from diffmesh.models import testmodels_dit as td
from diffmesh.models.dit import family
from diffmesh.models.dit.wan import axes_dims, sinusoid


def _shapes(size):
    return {k: v[0] for k, v in td.wan21_spec(size).items.items()}


def _net(size):
    fam = family("wan21")
    sd = td.state_dict("wan21", size)
    with torch.device("meta"):
        net = fam.build(fam.config({k: tuple(v.shape) for k, v in sd.items()}))
    missing, unexpected = net.load_state_dict(sd, strict=True, assign=True)
    assert not missing and not unexpected
    return net.eval().requires_grad_(False)


def test_wan_is_detected_from_its_keys_and_no_other_family_claims_it():
    from diffmesh.models import detect

    for size in ("tiny", "reference", "tiny-i2v"):
        assert detect.dit_family(_shapes(size)) == ("wan21", "")
        assert detect.dit_family({"model.diffusion_model." + k: v for k, v in _shapes(size).items()}) == \
            ("wan21", "model.diffusion_model.")
    for other in ("zimage", "qwenimage"):
        assert not family("wan21").matches({k: v[0] for k, v in td.SPECS[other]("tiny").items.items()})


@pytest.mark.parametrize("size,expected", [
    ("1.3b", dict(dim=1536, num_heads=12, ffn_dim=8960, num_layers=30, in_dim=16, model_type="t2v")),
    ("14b", dict(dim=5120, num_heads=40, ffn_dim=13824, num_layers=40, in_dim=16, model_type="t2v")),
    ("14b-i2v", dict(dim=5120, num_heads=40, ffn_dim=13824, num_layers=40, in_dim=36, model_type="i2v")),
    ("reference", dict(dim=256, num_heads=2, ffn_dim=512, num_layers=2, in_dim=16, model_type="t2v")),
])
def test_config_from_shapes_as_comfyui_detects_it(size, expected):
    """ComfyUI's wan2.1 detection: heads = dim / 128, ffn and in_dim from shapes, i2v from img_emb."""
    cfg = family("wan21").config(_shapes(size))
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["out_dim"] == 16 and cfg["text_dim"] == 4096


def test_rope_axes_and_timestep_sinusoid():
    assert axes_dims(128) == (44, 42, 42)
    emb = sinusoid(torch.tensor([1000.0, 0.0]))
    assert emb.shape == (2, 256)
    assert torch.equal(emb[1], torch.cat([torch.ones(128), torch.zeros(128)]))     # t = 0: cos 1, sin 0
    assert emb[0, 0] == torch.cos(torch.tensor(1000.0)) and emb[0, 128] == torch.sin(torch.tensor(1000.0))


def test_odd_sizes_are_padded_and_cropped_and_frames_are_kept():
    net = _net("tiny")
    x = torch.randn(2, 16, 3, 5, 7)
    out = net(x, torch.tensor([900.0, 500.0]), torch.randn(2, 12, 64))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_batched_samples_match_one_by_one():
    """Positive and negative run batched in CFG: each row must equal its own single run."""
    net = _net("tiny")
    x, t, ctx = torch.randn(2, 16, 2, 4, 4), torch.tensor([1000.0, 250.0]), torch.randn(2, 20, 64)
    both = net(x, t, ctx)
    for i in range(2):
        assert torch.allclose(both[i:i + 1], net(x[i:i + 1], t[i:i + 1], ctx[i:i + 1]), atol=1e-5)


def test_context_rows_all_count_including_zero_padding():
    """Cross-attention keys come from every context row: zero rows after the prompt change the output
    (UMT5 pads to 512 and ComfyUI attends the padding)."""
    net = _net("tiny")
    x, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([800.0]), torch.randn(1, 10, 64)
    padded = torch.cat([ctx, torch.zeros(1, 30, 64)], dim=1)
    assert not torch.allclose(net(x, t, ctx), net(x, t, padded), atol=1e-4)


def test_each_frame_sees_the_others_through_self_attention():
    net = _net("tiny")
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([800.0]), torch.randn(1, 10, 64)
    changed = x.clone()
    changed[:, :, 1] += 1.0
    a, b = net(x, t, ctx), net(changed, t, ctx)
    assert not torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-4)


def test_image_to_video_takes_clip_rows_and_concat_channels():
    net = _net("tiny-i2v")
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([800.0]), torch.randn(1, 10, 64)
    plain = net(x, t, ctx)                                   # no image: 20 zero channels, as ComfyUI
    assert plain.shape == x.shape
    concat = torch.randn(1, 20, 2, 4, 4)
    with_image = net(x, t, ctx, concat=concat, clip_fea=torch.randn(1, 257, 1280))
    assert with_image.shape == x.shape and not torch.allclose(plain, with_image, atol=1e-4)
    assert torch.equal(net(x, t, ctx, concat=torch.zeros(1, 20, 2, 4, 4)), plain)


def test_start_image_mask_marks_the_given_frames_for_the_model():
    """ComfyUI's concat_cond: the mask WanImageToVideo makes (0 on the given latent frames) is inverted,
    repeated to 4 channels and put before the normalised start-image latent."""
    from diffmesh.models.dit.wan import extra_conds
    from diffmesh.sampling.latent_formats import for_family

    latent = torch.randn(1, 16, 3, 4, 6)
    mask = torch.ones(1, 1, 3, 4, 6)
    mask[:, :, :1] = 0.0
    concat = extra_conds({"concat_latent_image": latent, "concat_mask": mask}, (2, 16, 3, 4, 6))["concat"]
    assert concat.shape == (1, 20, 3, 4, 6)
    assert torch.equal(concat[:, :4, 0], torch.ones(1, 4, 4, 6)) and not concat[:, :4, 1:].any()
    assert torch.allclose(concat[:, 4:], for_family("wan21").process_in(latent))
    # a start latent of another size is resized to the latent being sampled
    assert extra_conds({"concat_latent_image": torch.randn(1, 16, 3, 8, 12)}, (1, 16, 3, 4, 6))["concat"].shape == \
        (1, 20, 3, 4, 6)

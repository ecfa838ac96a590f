"""Z-Image and Qwen-Image on tiny random models: detection, configs, padding, positions, batching."""

import math

import pytest
import torch

from diffmesh.models import testmodels_dit as td
from diffmesh.models.dit import family
from diffmesh.models.dit.rope import rope_table


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _net(name, sd):
    fam = family(name)
    with torch.device("meta"):
        net = fam.build(fam.config(_shapes(sd)))
    weights = {k: v.clone() for k, v in fam.convert(sd).items()}     # tests may change a tensor in place
    missing, unexpected = net.load_state_dict(weights, strict=True, assign=True)
    assert not missing and not unexpected
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def zimage_sd():
    return td.state_dict("zimage", "tiny")


@pytest.fixture(scope="module")
def qwen_sd():
    return td.state_dict("qwenimage", "tiny")


@pytest.mark.parametrize("size", ["tiny", "reference"])
def test_each_family_recognises_its_own_files_only(size):
    z = {k: v[0] for k, v in td.zimage_spec(size).items.items()}
    q = {k: v[0] for k, v in td.qwenimage_spec(size).items.items()}
    assert family("zimage").matches(z) and not family("zimage").matches(q)
    assert family("qwenimage").matches(q) and not family("qwenimage").matches(z)


def test_lumina2_layout_with_silu_modulation_is_not_zimage(zimage_sd):
    # Lumina 2.0 modulates with Sequential(SiLU, Linear): its keys say adaLN_modulation.1
    lumina = {k.replace(".adaLN_modulation.0.", ".adaLN_modulation.1.") if not k.startswith("final_layer") else k: v
              for k, v in _shapes(zimage_sd).items()}
    assert not family("zimage").matches(lumina)


def test_configs_come_from_the_shapes():
    z = family("zimage").config({k: v[0] for k, v in td.zimage_spec("reference").items.items()})
    assert (z["dim"], z["n_heads"], z["n_kv_heads"], z["head_dim"]) == (3840, 30, 30, 128)
    assert (z["axes_dims"], z["ffn_dim"], z["cap_feat_dim"], z["n_layers"], z["n_refiner_layers"]) == \
        ((32, 48, 48), 10240, 2560, 1, 2)
    assert z["pad_tokens_multiple"] == 32
    q = family("qwenimage").config({k: v[0] for k, v in td.qwenimage_spec("reference").items.items()})
    assert (q["dim"], q["num_heads"], q["axes_dims"], q["joint_dim"], q["num_layers"]) == (3072, 24, (16, 56, 56), 3584, 1)
    tiny = family("zimage").config({k: v[0] for k, v in td.zimage_spec("tiny").items.items()})
    assert (tiny["n_heads"], tiny["head_dim"], sum(tiny["axes_dims"])) == (2, 32, 32)


def test_rope_angles_are_exact_at_long_caption_positions():
    """cos/sin of position*frequency to float32 rounding, even at positions in the hundreds (a
    float32 angle is off by ~1.5e-5 there)."""
    pos = torch.tensor([[[417.0, 0.0, 0.0]]])
    table = rope_table(pos, (32, 48, 48), 256.0)
    k = torch.arange(16, dtype=torch.float64)
    exact = torch.tensor([math.cos(417.0 * 256.0 ** (-2 * float(i) / 32)) for i in k])
    assert (table[0, 0, :16, 0].double() - exact).abs().max() < 1e-7


def test_zimage_short_captions_are_padded_with_the_learned_token(zimage_sd):
    net = _net("zimage", zimage_sd)
    x, t = torch.randn(1, 16, 8, 8), torch.tensor([0.6])
    ctx = torch.randn(1, 20, 64)
    base = net(x, t, ctx)
    with torch.no_grad():
        net.cap_pad_token.add_(0.5)
    changed = net(x, t, ctx)
    with torch.no_grad():
        net.cap_pad_token.sub_(0.5)
    assert (changed - base).abs().max() > 1e-3


def test_zimage_pad_token_does_not_touch_full_captions(zimage_sd):
    net = _net("zimage", zimage_sd)
    x, t, ctx = torch.randn(1, 16, 8, 8), torch.tensor([0.3]), torch.randn(1, 32, 64)
    before = net(x, t, ctx)
    with torch.no_grad():
        net.cap_pad_token.add_(0.5)
        after = net(x, t, ctx)
        net.cap_pad_token.sub_(0.5)
    assert torch.equal(before, after)


def test_zimage_odd_latent_sizes_are_padded_and_cropped_back(zimage_sd):
    net = _net("zimage", zimage_sd)
    out = net(torch.randn(1, 16, 5, 7), torch.tensor([0.5]), torch.randn(1, 9, 64))
    assert out.shape == (1, 16, 5, 7) and torch.isfinite(out).all()


def test_qwen_takes_5d_latents_and_batch_rows_do_not_mix(qwen_sd):
    net = _net("qwenimage", qwen_sd)
    x, t, ctx = torch.randn(2, 16, 1, 6, 8), torch.tensor([0.9, 0.4]), torch.randn(2, 7, 64)
    both = net(x, t, ctx)
    assert both.shape == (2, 16, 1, 6, 8)
    for i in range(2):
        alone = net(x[i:i + 1], t[i:i + 1], ctx[i:i + 1])
        torch.testing.assert_close(both[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_qwen_text_changes_the_prediction(qwen_sd):
    net = _net("qwenimage", qwen_sd)
    x, t = torch.randn(1, 16, 1, 4, 4), torch.tensor([0.7])
    a, b = net(x, t, torch.randn(1, 5, 64)), net(x, t, torch.randn(1, 11, 64))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("name,shape", [("zimage", (1, 16, 8, 8)), ("qwenimage", (1, 16, 1, 8, 8))])
def test_half_precision_weights_run_and_stay_close_to_fp32(zimage_sd, qwen_sd, name, shape):
    """bf16 weights compute in bf16 (RoPE and norms as in fp32) and land near the fp32 output."""
    net = _net(name, zimage_sd if name == "zimage" else qwen_sd)
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(shape, generator=g), torch.randn((1, 12, 64), generator=g), torch.tensor([0.8])
    full = net(x, t, ctx)
    half = net.to(torch.bfloat16)(x.bfloat16(), t, ctx.bfloat16()).float()
    assert torch.isfinite(half).all()
    assert float((half - full).norm() / full.norm()) < 0.05

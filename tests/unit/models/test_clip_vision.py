"""CLIP-vision encoders and style models on tiny random files: ComfyUI's preprocessing numbers, kind
detection from the keys (tiny files and the full shipped configs), output fields and shapes, the
open_clip key layout, and the Redux / style-adapter token maths."""

import math
import pickle

import pytest
import torch

from diffmesh.errors import ModelError
from diffmesh.models import clip_vision as cv
from diffmesh.models import testmodels_vision as tv
from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import build_component

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalised(value: float, channel: int) -> float:
    """By hand: quantise to 8 bits (round half to even, as torch.round), then normalise."""
    return (round(255 * value) / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]


def test_preprocess_of_an_image_at_the_encoder_size_only_quantises_and_normalises():
    image = torch.zeros(1, 224, 224, 3)
    image[0, 5, 7] = torch.tensor([0.5, 0.3, 1.0])
    image[0, 0, 0] = torch.tensor([0.1234, 0.999, 0.0])
    out = cv.clip_preprocess(image, 224, CLIP_MEAN, CLIP_STD, crop=True)
    assert out.shape == (1, 3, 224, 224)
    for (y, x), values in (((5, 7), (0.5, 0.3, 1.0)), ((0, 0), (0.1234, 0.999, 0.0))):
        for c in range(3):
            assert float(out[0, c, y, x]) == pytest.approx(_normalised(values[c], c), abs=1e-6)


def test_center_crop_keeps_the_middle_of_a_wide_image():
    # 224 x 448: the shorter side is already 224, so only the centre 224 columns remain
    image = torch.zeros(1, 224, 448, 3)
    image[:, :, 112:336] = 0.75
    out = cv.clip_preprocess(image, 224, CLIP_MEAN, CLIP_STD, crop=True)
    assert out.shape == (1, 3, 224, 224)
    for c in range(3):
        assert torch.allclose(out[0, c], torch.full((224, 224), _normalised(0.75, c)), atol=1e-6)


def test_resize_keeps_a_flat_image_flat_and_crop_none_squashes_to_a_square():
    flat = torch.full((2, 100, 300, 4), 0.25)                 # a fourth (alpha) channel is dropped
    for crop in (True, False):
        out = cv.clip_preprocess(flat, 224, CLIP_MEAN, CLIP_STD, crop=crop)
        assert out.shape == (2, 3, 224, 224)
        assert torch.allclose(out[:, 1], torch.full((2, 224, 224), _normalised(0.25, 1)), atol=1e-6)
    ramp = torch.linspace(0, 1, 300).view(1, 1, 300, 1).expand(1, 100, 300, 3)
    centre = cv.clip_preprocess(ramp, 224, CLIP_MEAN, CLIP_STD, crop=True)
    squashed = cv.clip_preprocess(ramp, 224, CLIP_MEAN, CLIP_STD, crop=False)
    # the centre crop sees the middle third of the ramp; the squashed image sees all of it
    assert float(centre[0, 0, 0, 0]) > float(squashed[0, 0, 0, 0]) + 1.0
    assert float(centre[0, 0, 0, -1]) < float(squashed[0, 0, 0, -1]) - 1.0


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return tv.write_tiny_vision_models(tmp_path_factory.mktemp("vision"))


@pytest.mark.parametrize("kind, expected", [("vit_g", "vit_g"), ("vit_h", "vit_h"), ("vit_l", "vit_l"),
                                            ("siglip", "siglip_384")])
def test_tiny_files_are_told_apart_by_comfyuis_markers(kind, expected):
    sd = tv.clip_vision_state_dict(kind)
    config = cv.config_for(cv.vision_state_dict(sd, "tiny"), "tiny")
    assert config["kind"] == expected
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, tv.TINY_DEPTH[kind])


def _vit_parameters(width, inner, layers, patch, image, projection, class_token=True):
    """By hand: patch conv, (class token), positions, pre/post norms, layers, projection."""
    grid = (image // patch) ** 2
    per_layer = 4 * (width * width + width) + 4 * width + (width * inner + inner) + (inner * width + width)
    embed = 3 * patch * patch * width + width + (grid + class_token) * width     # + class token or patch bias
    norms = (4 if class_token else 2) * width
    return embed + norms + layers * per_layer + width * projection


# ComfyUI's clip_vision_config_{g,h,vitl,vitl_336}.json and clip_vision_siglip_384.json dimensions
@pytest.mark.parametrize("kind, params", [
    ("vit_g", _vit_parameters(1664, 8192, 48, 14, 224, 1280)),
    ("vit_h", _vit_parameters(1280, 5120, 32, 14, 224, 1024)),
    ("vit_l", _vit_parameters(1024, 4096, 24, 14, 224, 768)),          # 303,966,208 (CLIP ViT-L/14)
    ("vit_l_336", _vit_parameters(1024, 4096, 24, 14, 336, 768)),
    ("siglip_384", _vit_parameters(1152, 4304, 27, 14, 384, 0, class_token=False))])
def test_full_size_configs_round_trip_through_detection(kind, params):
    """The network of each shipped config, built without memory, is detected as that config again."""
    config = cv.shipped_configs()[kind]
    with torch.device("meta"):
        net = cv._network(config)
    sd = {("vision_model." + k if not k.startswith(("vision_model.", "visual_")) else k): v
          for k, v in net.state_dict().items()}
    found = cv.config_for(sd, kind)
    assert found["kind"] == kind
    assert {k: found[k] for k in config} == config
    assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize("kind", ["vit_g", "vit_h", "vit_l", "siglip"])
def test_encoder_outputs_have_comfyuis_fields_and_shapes(tiny_files, kind):
    encoder = build_component(ModelHandle(tiny_files[f"clip_vision_{kind}"], "clip", "clip_vision"))
    images = torch.rand(2, 90, 120, 3, generator=torch.Generator().manual_seed(0))
    out = encoder.encode_image(images, crop=True)
    tokens = 16 if kind == "siglip" else 257
    assert out.last_hidden_state.shape == (2, tokens, 32)
    assert out.penultimate_hidden_states.shape == (2, tokens, 32)
    size = 56 if kind == "siglip" else 224
    assert out["mm_projected"] is None and out["image_sizes"] == [torch.Size([3, size, size])] * 2
    assert not torch.allclose(out.penultimate_hidden_states, out.last_hidden_state)
    if kind == "siglip":
        assert out.all_hidden_states.shape == (2, 2, 16, 32)
        assert torch.equal(out.image_embeds, out.last_hidden_state)
        assert torch.equal(out.all_hidden_states[:, -2], out.penultimate_hidden_states)
    else:
        assert out.image_embeds.shape == (2, tv.TINY["projection"])
        assert not hasattr(out, "all_hidden_states")


def test_penultimate_is_the_output_of_the_second_to_last_layer(tiny_files):
    encoder = build_component(ModelHandle(tiny_files["clip_vision_vit_l"], "clip", "clip_vision"))
    layers = encoder.network.vision_model.encoder.layers
    seen = {}
    layers[len(layers) - 2].register_forward_hook(lambda m, a, o: seen.update(x=o[0] if isinstance(o, tuple) else o))
    out = encoder.encode_image(torch.rand(1, 224, 224, 3), crop=True)
    assert torch.allclose(out.penultimate_hidden_states, seen["x"], atol=1e-6)
    # image_embeds = projection of the post-normed class token of the last layer
    pooled = encoder.network.vision_model.post_layernorm(out.last_hidden_state[:, 0])
    assert torch.allclose(out.image_embeds, encoder.network.visual_projection(pooled), atol=1e-5)


def test_open_clip_layout_gives_the_same_encoder(tiny_files):
    images = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    plain = build_component(ModelHandle(tiny_files["clip_vision_vit_h"], "clip", "clip_vision"))
    open_clip = build_component(ModelHandle(tiny_files["clip_vision_open_clip"], "clip", "clip_vision"))
    a, b = plain.encode_image(images), open_clip.encode_image(images)
    assert torch.allclose(a.image_embeds, b.image_embeds, atol=1e-5)
    assert torch.allclose(a.penultimate_hidden_states, b.penultimate_hidden_states, atol=1e-5)


def test_output_reads_as_attributes_and_items_and_pickles():
    out = cv.ClipVisionOutput(last_hidden_state=torch.ones(1, 2, 3))
    out["penultimate_hidden_states"] = torch.zeros(1, 2, 3)
    again = pickle.loads(pickle.dumps(out))
    assert torch.equal(again.penultimate_hidden_states, out["penultimate_hidden_states"])
    assert again["last_hidden_state"].shape == (1, 2, 3) and again.mm_projected is None


def test_a_file_without_a_vision_tower_names_the_file_and_the_folder():
    with pytest.raises(ModelError, match="no CLIP-vision encoder.*models/clip_vision"):
        cv.vision_state_dict({"model.diffusion_model.x": torch.zeros(1)}, "some.safetensors")


def test_redux_tokens_are_the_silu_mlp_of_the_last_hidden_state(tiny_files):
    from safetensors.torch import load_file

    from diffmesh.models.style_model import load_style_model

    style = load_style_model(tiny_files["redux"])
    sd = load_file(tiny_files["redux"])
    tokens = torch.randn(2, 16, 32)
    expected = torch.nn.functional.silu(tokens @ sd["redux_up.weight"].T + sd["redux_up.bias"]) \
        @ sd["redux_down.weight"].T + sd["redux_down.bias"]
    got = style.get_cond(cv.ClipVisionOutput(last_hidden_state=tokens))
    assert got.shape == (2, 16, 64) and torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="takes CLIP-vision tokens 32 wide.*sigclip_vision_patch14_384"):
        style.get_cond(cv.ClipVisionOutput(last_hidden_state=torch.randn(1, 4, 48)))


def test_style_adapter_turns_vision_tokens_into_its_style_tokens(tmp_path):
    from diffmesh.models.style_model import StyleAdapter, load_style_model

    adapter = StyleAdapter(width=32, context_dim=24, layers=3, tokens=8)
    sd = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) * 0.1
          for i, (k, v) in enumerate(adapter.state_dict().items())}
    tv.save(sd, tmp_path / "style.safetensors")
    style = load_style_model(tmp_path / "style.safetensors")
    assert style.kind == "style_adapter"
    out = style.get_cond(cv.ClipVisionOutput(last_hidden_state=torch.randn(2, 257, 32)))
    assert out.shape == (2, 8, 24) and torch.isfinite(out).all()


def test_gligen_box_tensors_are_comfyuis_fractions_masks_and_padding():
    from diffmesh.models.gligen import MAX_OBJECTS, box_tensors

    pooled = torch.arange(4.0).view(1, 4)
    # latent 8 high, 16 wide; a box 4 high, 8 wide at y 2, x 4 (latent pixels)
    out = box_tensors((2, 4, 8, 16), [(pooled, 4, 8, 2, 4)], key_dim=4)
    assert out["boxes"].shape == (2, MAX_OBJECTS, 4) and out["masks"].shape == (2, MAX_OBJECTS)
    assert out["boxes"][1, 0].tolist() == [4 / 16, 2 / 8, 12 / 16, 6 / 8]
    assert out["masks"][0, :2].tolist() == [1.0, 0.0] and float(out["embeddings"][0, 1:].abs().sum()) == 0
    assert torch.equal(out["embeddings"][1, 0], pooled[0])
    with pytest.raises(ValueError, match="at most 30 boxes"):
        box_tensors((1, 4, 8, 8), [(pooled, 1, 1, 0, 0)] * 31, key_dim=4)


def test_gligen_file_is_read_by_its_keys_and_other_files_are_refused(tiny_files):
    from diffmesh.models.gligen import read_gligen

    model = read_gligen(tiny_files["gligen"])
    assert (model.key_dim, model.fusers) == (32, 7)          # every transformer block of the tiny SD1 UNet
    with pytest.raises(ModelError, match="not a GLIGEN model.*models/gligen"):
        read_gligen(tiny_files["redux"])


def _alpha_bar(level: int) -> float:
    """By hand: the squared-cosine schedule's alpha-bar after level + 1 steps (betas capped at 0.999)."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2   # noqa: E731
    product = 1.0
    for i in range(level + 1):
        product *= 1 - min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999)
    return product


def _level_embedding(level: int, dim: int) -> torch.Tensor:
    half = dim // 2
    args = [level * math.exp(-math.log(10000) * i / half) for i in range(half)]
    return torch.tensor([math.cos(a) for a in args] + [math.sin(a) for a in args])


def test_unclip_adm_of_one_embedding_is_comfyuis_noised_embedding_and_level():
    from diffmesh.models.unclip import unclip_adm

    embeds = torch.randn(1, 8, generator=torch.Generator().manual_seed(3))
    entry = {"clip_vision_output": cv.ClipVisionOutput(image_embeds=embeds), "strength": 0.7,
             "noise_augmentation": 0.25}
    y = unclip_adm([entry], adm_channels=16, seed=42)
    level = round(999 * 0.25)                                          # 250 (round half to even)
    noise = torch.randn(1, 8, generator=torch.Generator().manual_seed(32))       # the sampler's seed - 10
    ab = _alpha_bar(level)
    expected = torch.cat([math.sqrt(ab) * embeds + math.sqrt(1 - ab) * noise, _level_embedding(level, 8)[None]], 1)
    assert y.shape == (1, 16) and torch.allclose(y, 0.7 * expected, atol=1e-5)
    assert torch.equal(unclip_adm(None, 16, seed=42), torch.zeros(1, 16))


def test_unclip_adm_of_two_embeddings_sums_them_and_noises_the_sum_at_level_50():
    from diffmesh.models.unclip import unclip_adm

    embeds = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    entry = {"clip_vision_output": cv.ClipVisionOutput(image_embeds=embeds), "strength": 1.0, "noise_augmentation": 0.0}
    y = unclip_adm([entry], adm_channels=16, seed=10)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 8, generator=g)          # the same draw for each embedding (re-seeded), then the merge's
    merge_noise = torch.randn(1, 8, generator=g)
    ab0 = _alpha_bar(0)
    parts = [math.sqrt(ab0) * e[None] + math.sqrt(1 - ab0) * noise for e in embeds]
    ab50 = _alpha_bar(50)
    expected = torch.cat([math.sqrt(ab50) * (parts[0] + parts[1]) + math.sqrt(1 - ab50) * merge_noise,
                          _level_embedding(50, 8)[None]], 1)
    assert torch.allclose(y, expected, atol=1e-5)


def test_unclip_adm_refuses_embeddings_of_another_width():
    from diffmesh.models.unclip import unclip_adm

    entry = {"clip_vision_output": cv.ClipVisionOutput(image_embeds=torch.zeros(1, 12)), "strength": 1.0,
             "noise_augmentation": 0.0}
    with pytest.raises(ValueError, match="takes image embeddings 1024 wide.*unCLIPCheckpointLoader"):
        unclip_adm([entry], adm_channels=2048, seed=0)


def test_make_test_model_writes_tiny_vision_files_that_load(tmp_path):
    from diffmesh.cli import main
    from diffmesh.models.detect import detect_family

    assert main(["make-test-model", "--family", "clip_vision_l", "--out", str(tmp_path / "l.safetensors")]) == 0
    assert main(["make-test-model", "--family", "sd21unclip", "--out", str(tmp_path / "u.safetensors")]) == 0
    encoder = build_component(ModelHandle(str(tmp_path / "l.safetensors"), "clip", "clip_vision"))
    assert encoder.config["kind"] == "vit_l" and encoder.config["hidden_act"] == "quick_gelu"
    assert detect_family(str(tmp_path / "u.safetensors")) == "sd2unclip"


def _attention(q_in, kv_in, attn, heads):
    """By hand: multi-head softmax attention with the module's projections."""
    b, n, _ = q_in.shape
    q, k, v = attn.to_q(q_in), attn.to_k(kv_in), attn.to_v(kv_in)
    split = lambda t: t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)   # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.to_out[0]((weights @ v).transpose(1, 2).reshape(b, n, -1))


def test_gligen_patch_is_comfyuis_position_net_and_gated_self_attention(tiny_files):
    """ComfyUI's formulas written out by hand: Fourier box features (sin, cos per frequency 100^(i/8)),
    null features where the mask is 0, the 512-wide SiLU MLP; then x + tanh(a_attn) attn(norm1([x, objs]))
    over the visual rows, + tanh(a_dense) GEGLU-MLP(norm2(x))."""
    from safetensors.torch import load_file

    from diffmesh.models.gligen import GligenPatch, box_tensors

    sd = load_file(tiny_files["gligen"])
    patch = GligenPatch(sd, "tiny")
    pooled = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    boxes = box_tensors((1, 4, 8, 8), [(pooled, 4, 4, 2, 2)], key_dim=32)
    objs = patch.position_net(boxes["boxes"], boxes["masks"], positive_embeddings=boxes["embeddings"])
    freqs = 100 ** (torch.arange(8) / 8)
    box = boxes["boxes"][0, 0]
    fourier = torch.cat([torch.cat([torch.sin(f * box), torch.cos(f * box)]) for f in freqs])
    mlp = lambda t: torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(  # noqa: E731
        torch.nn.functional.silu(torch.nn.functional.linear(t, sd["position_net.linears.0.weight"],
                                                            sd["position_net.linears.0.bias"])),
        sd["position_net.linears.2.weight"], sd["position_net.linears.2.bias"])),
        sd["position_net.linears.4.weight"], sd["position_net.linears.4.bias"])
    assert torch.allclose(objs[0, 0], mlp(torch.cat([pooled[0], fourier])), atol=1e-5)
    empty = torch.cat([sd["position_net.null_positive_feature"], sd["position_net.null_position_feature"]])
    assert torch.allclose(objs[0, 1], mlp(empty), atol=1e-5)

    fuser = patch.fusers[0]                                    # input_blocks.1: 32 wide, one head of 64
    x = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(3))
    tokens = fuser.linear(objs)
    h = x + math.tanh(0.5) * _attention(fuser.norm1(torch.cat([x, tokens], 1)),
                                        fuser.norm1(torch.cat([x, tokens], 1)), fuser.attn, 1)[:, :16]
    proj = fuser.ff.net[0].proj(fuser.norm2(h))
    a, gate = proj.chunk(2, dim=-1)
    expected = h + math.tanh(0.3) * fuser.ff.net[2](a * torch.nn.functional.gelu(gate))
    assert torch.allclose(fuser(x, objs), expected, atol=1e-5)


def test_sdxl_revision_replaces_the_pooled_text_with_the_merged_image_embeddings(tiny_models):
    """ComfyUI's sdxl_pooled: unclip_adm with merge level 0 (not unCLIP's 0.05), first 1280 (here 64) columns."""
    from diffmesh.models.unclip import unclip_adm

    unet = build_component(ModelHandle(tiny_models["sdxl"], "unet", "sdxl"))
    embeds = torch.randn(2, 64, generator=torch.Generator().manual_seed(6))
    entry = {"clip_vision_output": cv.ClipVisionOutput(image_embeds=embeds), "strength": 1.0, "noise_augmentation": 0.0}
    options = {"pooled_output": torch.ones(1, 64), "unclip_conditioning": [entry], "seed": 17}
    pooled = unet.extra_conds(options, (1, 4, 8, 8))["text_embeds"]
    g = torch.Generator().manual_seed(7)
    noise, merge_noise = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
    ab0 = _alpha_bar(0)
    total = sum(math.sqrt(ab0) * e[None] + math.sqrt(1 - ab0) * noise for e in embeds)
    assert torch.allclose(pooled, math.sqrt(ab0) * total + math.sqrt(1 - ab0) * merge_noise, atol=1e-5)
    assert not torch.allclose(pooled, unclip_adm([entry], 128, 17)[:, :64])          # unCLIP's merge level differs
    assert torch.equal(unet.extra_conds({"pooled_output": torch.ones(1, 64)}, (1, 4, 8, 8))["text_embeds"],
                       torch.ones(1, 64))

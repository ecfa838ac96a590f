"""Building UNet / text encoder / VAE components from tiny checkpoints and running them."""

import pytest
import torch

from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import build_component


def _unet_out(unet, cond, x):
    extra = unet.extra_conds(cond[0][1], tuple(x.shape))
    extra = {k: v.expand(x.shape[0], -1) for k, v in extra.items()}
    context = cond[0][0].expand(x.shape[0], -1, -1)
    return unet(x, torch.full((x.shape[0],), 500.0), context, **extra)


@pytest.mark.parametrize("family,prediction", [("sd1", "eps"), ("sd2", "eps"), ("sd2v", "v"), ("sdxl", "eps")])
def test_every_family_loads_and_runs_one_forward(tiny_models, store, family, prediction):
    path = tiny_models[family]
    clip = build_component(ModelHandle(path, "clip", family), "cpu", None, store)
    unet = build_component(ModelHandle(path, "unet", family), "cpu", None, store)
    cond = clip.encode("a cat on a mat")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = _unet_out(unet, cond, x)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert unet.model_sampling.prediction_type == prediction
    assert isinstance(unet, torch.nn.Module) and unet.dtype == torch.float32 and unet.device.type == "cpu"


def test_sdxl_conditioning_concatenates_both_encoders_and_pools_from_bigG(tiny_models, store):
    clip = build_component(ModelHandle(tiny_models["sdxl"], "clip", "sdxl"), "cpu", None, store)
    [[cond, opts]] = clip.encode("a cat")
    assert cond.shape == (1, 77, 32 + 64)
    assert opts["pooled_output"].shape == (1, 64)


def test_sdxl_size_conditioning_changes_the_prediction(tiny_models, store):
    path = tiny_models["sdxl"]
    clip = build_component(ModelHandle(path, "clip", "sdxl"), "cpu", None, store)
    unet = build_component(ModelHandle(path, "unet", "sdxl"), "cpu", None, store)
    [[cond, opts]] = clip.encode("a cat")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    default = _unet_out(unet, [[cond, opts]], x)
    sized = _unet_out(unet, [[cond, dict(opts, width=1024, height=512)]], x)
    assert unet.extra_conds(dict(opts, width=1024, height=512), x.shape)["time_ids"].tolist() == \
        [[512.0, 1024.0, 0.0, 0.0, 512.0, 1024.0]]
    assert not torch.allclose(default, sized)


def test_clip_skip_selects_an_earlier_layer(tiny_models, store):
    path = tiny_models["sd1"]
    last = build_component(ModelHandle(path, "clip", "sd1"), "cpu", None, store).encode("a cat")[0][0]
    explicit_last = build_component(ModelHandle(path, "clip", "sd1", clip_skip=-1), "cpu", None, store)
    skipped = build_component(ModelHandle(path, "clip", "sd1", clip_skip=-2), "cpu", None, store)
    assert torch.equal(explicit_last.encode("a cat")[0][0], last)
    assert not torch.allclose(skipped.encode("a cat")[0][0], last)


def test_weighted_prompt_interpolates_from_the_empty_prompt(tiny_models, store):
    clip = build_component(ModelHandle(tiny_models["sd1"], "clip", "sd1"), "cpu", None, store)
    plain = clip.encode("a cat")[0][0]
    unit = clip.encode("(a cat:1.0)")[0][0]
    heavy = clip.encode("(a cat:1.5)")[0][0]
    assert torch.equal(plain, unit)
    assert torch.allclose(heavy[0, 0], plain[0, 0])              # start token keeps weight 1
    assert not torch.allclose(heavy[0, 1:3], plain[0, 1:3])


def test_long_prompt_gives_conditioning_of_two_chunks(tiny_models, store):
    clip = build_component(ModelHandle(tiny_models["sd2"], "clip", "sd2"), "cpu", None, store)
    [[cond, opts]] = clip.encode(", ".join(["red apple"] * 40))
    assert cond.shape == (1, 154, 64) and opts["pooled_output"].shape == (1, 64)


def test_embeddings_from_the_embeddings_folder_change_the_conditioning(tiny_model_files, store):
    path = tiny_model_files["checkpoints"]["sd1"]
    emb_dir = str(tiny_model_files["embeddings"]["sd1"]).rsplit("/", 1)[0]
    clip = build_component(ModelHandle(path, "clip", "sd1", embedding_dirs=(emb_dir,)), "cpu", None, store)
    plain = clip.encode("a cat")[0][0]
    with_st = clip.encode("a cat embedding:tiny-sd1-emb")[0][0]
    with_pt = clip.encode("a cat embedding:tiny-sd1-emb-pt.pt")[0][0]
    missing = clip.encode("a cat embedding:does-not-exist")[0][0]
    assert not torch.allclose(with_st, plain) and not torch.allclose(with_pt, with_st)
    assert torch.equal(missing, plain)
    ids = [t for t, _ in clip.tokenize("a cat embedding:tiny-sd1-emb-pt")[0]]
    assert sum(isinstance(t, torch.Tensor) for t in ids) == 3  # all three vectors of the .pt embedding


def test_sdxl_embedding_gives_each_encoder_its_own_vectors(tiny_model_files, store):
    path = tiny_model_files["checkpoints"]["sdxl"]
    emb_dir = str(tiny_model_files["embeddings"]["sdxl"]).rsplit("/", 1)[0]
    clip = build_component(ModelHandle(path, "clip", "sdxl", embedding_dirs=(emb_dir,)), "cpu", None, store)
    assert not torch.allclose(clip.encode("embedding:tiny-sdxl-emb")[0][0], clip.encode("")[0][0])


def test_vae_round_trip_shapes_and_range(tiny_model_files, store):
    vae = build_component(ModelHandle(tiny_model_files["checkpoints"]["sd1"], "vae", "sd1"), "cpu", None, store)
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    image = vae.decode(latent)
    assert image.shape == (2, 64, 64, 3) and image.min() >= 0 and image.max() <= 1
    z = vae.encode(torch.rand(1, 70, 66, 4))                    # cropped to 64x64, alpha dropped
    assert z.shape == (1, 4, 8, 8)
    assert torch.equal(vae.encode(image[:1]), vae.encode(image[:1]))  # the mean, not a sample


def test_separate_vae_file_loads_and_differs_from_baked_vae(tiny_model_files, store):
    baked = build_component(ModelHandle(tiny_model_files["checkpoints"]["sd1"], "vae", "sd1"), "cpu", None, store)
    separate = build_component(ModelHandle(tiny_model_files["vae"]["tiny"], "vae", "sd1"), "cpu", None, store)
    latent = torch.randn(1, 4, 8, 8)
    assert separate.decode(latent).shape == (1, 64, 64, 3)
    assert not torch.allclose(separate.decode(latent), baked.decode(latent))


def test_tiled_decode_equals_plain_decode_when_one_tile_covers_the_latent(tiny_model_files, store):
    vae = build_component(ModelHandle(tiny_model_files["checkpoints"]["sd1"], "vae", "sd1"), "cpu", None, store)
    latent = torch.randn(1, 4, 8, 8)
    assert torch.allclose(vae.decode_tiled(latent, tile_size=128, overlap=32), vae.decode(latent), atol=1e-6)


def test_tiled_decode_of_a_larger_latent_has_the_decoded_size(tiny_model_files, store):
    vae = build_component(ModelHandle(tiny_model_files["checkpoints"]["sd1"], "vae", "sd1"), "cpu", None, store)
    latent = torch.randn(1, 4, 24, 16, generator=torch.Generator().manual_seed(2))
    tiled = vae.decode_tiled(latent, tile_size=64, overlap=16)
    assert tiled.shape == (1, 192, 128, 3) and tiled.min() >= 0 and tiled.max() <= 1


def test_feathered_tiles_reassemble_a_local_function_exactly():
    from diffmesh.models.vae import feathered_tiles

    def upscale(z):  # purely local: tiles must blend back to the whole result
        return z[:, :3].repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)

    latent = torch.randn(2, 4, 30, 21)
    for tile in ((16, 4), (4, 16), (8, 8)):
        assert torch.allclose(feathered_tiles(latent, upscale, tile, 2, 8, 3), upscale(latent), atol=1e-5)

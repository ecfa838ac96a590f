"""The diffusion-transformer nodes: ComfyUI's schemas, and what each does to handles, conditioning,
latents and images."""

import pytest
import torch

from diffmesh.config.paths import Paths
from diffmesh.models.handle import ModelHandle
from diffmesh.nodes import dit
from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.registry import build_registry
from diffmesh.nodes.sampling import model_sampling_for
from diffmesh.sampling.schedules import ksampler_sigmas


@pytest.fixture
def ctx(models_base):
    return NodeContext(engine=None, paths=Paths.build(models_base), node_id="1", prompt={}, extra_data={}, state={})


@pytest.fixture(scope="module")
def info(models_base):
    return build_registry().object_info(Paths.build(models_base), ["cpu"])


@pytest.mark.parametrize("name,display,category,module,required", [
    ("UNETLoader", "Load Diffusion Model", "advanced/loaders", "nodes", ["unet_name", "weight_dtype"]),
    ("ModelSamplingSD3", "ModelSamplingSD3", "advanced/model", "comfy_extras.nodes_model_advanced", ["model", "shift"]),
    ("ModelSamplingAuraFlow", "ModelSamplingAuraFlow", "advanced/model", "comfy_extras.nodes_model_advanced",
     ["model", "shift"]),
    ("ModelSamplingFlux", "ModelSamplingFlux", "advanced/model", "comfy_extras.nodes_model_advanced",
     ["model", "max_shift", "base_shift", "width", "height"]),
    ("FluxGuidance", "FluxGuidance", "advanced/conditioning/flux", "comfy_extras.nodes_flux",
     ["conditioning", "guidance"]),
    ("ConditioningZeroOut", "ConditioningZeroOut", "advanced/conditioning", "nodes", ["conditioning"]),
    ("EmptySD3LatentImage", "EmptySD3LatentImage", "latent/sd3", "comfy_extras.nodes_sd3",
     ["width", "height", "batch_size"]),
    ("ImageScaleToTotalPixels", "Scale Image to Total Pixels", "image/upscaling",
     "comfy_extras.nodes_post_processing", ["image", "upscale_method", "megapixels", "resolution_steps"]),
])
def test_schemas_follow_comfyui(info, name, display, category, module, required):
    entry = info[name]
    assert (entry["display_name"], entry["category"], entry["python_module"]) == (display, category, module)
    assert entry["input_order"]["required"] == required


def test_input_options_are_comfyuis(info):
    unet = info["UNETLoader"]["input"]["required"]
    assert unet["weight_dtype"][0] == ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    assert "tiny-flux-dev.safetensors" in unet["unet_name"][0]
    assert info["ModelSamplingAuraFlow"]["input"]["required"]["shift"][1] == {"default": 1.73, "min": 0.0,
                                                                              "max": 100.0, "step": 0.01}
    assert info["ModelSamplingSD3"]["input"]["required"]["shift"][1]["default"] == 3.0
    flux = info["ModelSamplingFlux"]["input"]["required"]
    assert (flux["max_shift"][1]["default"], flux["base_shift"][1]["default"], flux["width"][1]) == \
        (1.15, 0.5, {"default": 1024, "min": 16, "max": 16384, "step": 8})
    assert info["FluxGuidance"]["input"]["required"]["guidance"][1] == {"default": 3.5, "min": 0.0, "max": 100.0,
                                                                        "step": 0.1}
    assert info["EmptySD3LatentImage"]["input"]["required"]["width"][1]["step"] == 16


def test_unet_loader_detects_the_family_and_maps_weight_dtype(ctx):
    (handle,) = dit.load_unet(ctx, "tiny-flux-dev.safetensors", "fp8_e4m3fn_fast")
    assert (handle.component, handle.family, handle.dtype) == ("unet", "flux", "fp8_e4m3fn")
    assert dit.load_unet(ctx, "tiny-flux-dev.safetensors", "default")[0].dtype is None
    assert dit.load_unet(ctx, "tiny-flux-dev.safetensors", "fp8_e5m2")[0].dtype == "fp8_e5m2"


def test_unet_loader_reads_the_old_unet_folder(models_base, tmp_path):
    import shutil

    legacy = tmp_path / "models" / "unet"
    legacy.mkdir(parents=True)
    shutil.copy(models_base / "models" / "diffusion_models" / "tiny-flux-schnell.safetensors",
                legacy / "legacy-flux.safetensors")
    ctx = NodeContext(engine=None, paths=Paths.build(tmp_path), node_id="1", prompt={}, extra_data={}, state={})
    (handle,) = dit.load_unet(ctx, "legacy-flux.safetensors", "default")
    assert handle.family == "flux" and handle.path.endswith("legacy-flux.safetensors")


def test_missing_unet_names_the_file(ctx):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        dit.load_unet(ctx, "nope.safetensors", "default")


@pytest.mark.parametrize("node,args,expected", [
    # reference README: AuraFlow(3), SD3(8), AuraFlow(3.1) with the simple scheduler, 4 steps
    ("aura", (3.0,), [1.0, 0.9, 0.75, 0.5, 0.0]),
    ("sd3", (8.0,), [1.0, 0.96, 0.88889, 0.72727, 0.0]),
    ("aura", (3.1,), [1.0, 0.90291, 0.75610, 0.50820, 0.0]),
    ("flux", (1.15, 0.5, 256, 256), [1.0, 0.83182, 0.62246, 0.35466, 0.0]),
])
def test_model_sampling_nodes_set_the_sigmas(ctx, node, args, expected):
    model = ModelHandle("/x/model.safetensors", "unet", "flux")
    fn = {"aura": dit.sampling_aura_flow, "sd3": dit.sampling_sd3, "flux": dit.sampling_flux}[node]
    (patched,) = fn(ctx, model, *args)
    assert model.sampling is None and patched.weights_key == model.weights_key
    sigmas = ksampler_sigmas(model_sampling_for(patched), "simple", "euler", 4, 1.0)
    assert torch.allclose(sigmas, torch.tensor(expected), atol=1e-5)


def test_model_sampling_multipliers():
    model = ModelHandle("/x/model.safetensors", "unet", "sd1")
    assert dit.sampling_sd3(None, model, 3.0)[0].sampling == ("shift", 3.0, 1000.0)
    assert dit.sampling_aura_flow(None, model, 3.0)[0].sampling == ("shift", 3.0, 1.0)


def test_flux_mu_is_base_at_256_tokens_and_max_at_4096():
    assert dit.flux_mu(1.15, 0.5, 256, 256) == pytest.approx(0.5)
    assert dit.flux_mu(1.15, 0.5, 1024, 1024) == pytest.approx(1.15)


def test_flux_guidance_sets_the_value_on_every_entry_without_touching_the_input(ctx):
    cond = [[torch.ones(1, 3, 4), {"pooled_output": torch.ones(1, 2)}], [torch.ones(1, 2, 4), {}]]
    (out,) = dit.flux_guidance(ctx, cond, 2.5)
    assert [o[1]["guidance"] for o in out] == [2.5, 2.5]
    assert "guidance" not in cond[0][1] and out[0][0] is cond[0][0]


def test_conditioning_zero_out_zeros_tensor_and_pooled_and_keeps_options(ctx):
    cond = [[torch.ones(1, 3, 4), {"pooled_output": torch.ones(1, 2), "guidance": 3.5}]]
    (out,) = dit.zero_out(ctx, cond)
    assert not out[0][0].any() and out[0][0].shape == (1, 3, 4)
    assert not out[0][1]["pooled_output"].any() and out[0][1]["guidance"] == 3.5
    assert cond[0][0].all() and cond[0][1]["pooled_output"].all()


def test_empty_sd3_latent_has_16_channels(ctx):
    (out,) = dit.empty_sd3_latent(ctx, 256, 192, 3)
    assert out["samples"].shape == (3, 16, 24, 32) and not out["samples"].any()


@pytest.mark.parametrize("megapixels,steps,size", [(1.0, 1, (1024, 1024)), (0.5, 1, (724, 724)), (0.5, 64, (704, 704)),
                                                   (0.25, 16, (512, 512))])
def test_image_scale_to_total_pixels(ctx, megapixels, steps, size):
    image = torch.rand(1, 100, 100, 3)
    (out,) = dit.scale_to_total_pixels(ctx, image, "bilinear", megapixels, steps)
    assert out.shape == (1, size[0], size[1], 3)


def test_an_empty_4_channel_latent_becomes_the_models_format_before_the_noise(reference_dir):
    """EmptyLatentImage into a Flux KSampler: 16 zero channels, so the seed's noise is ComfyUI's."""
    from safetensors.torch import load_file

    from diffmesh.nodes.sampling import fix_empty_latent
    from diffmesh.sampling.noise import prepare_noise

    fixed = fix_empty_latent(torch.zeros(1, 4, 32, 32), "flux")
    assert fixed.shape == (1, 16, 32, 32)
    reference = load_file(str(reference_dir / "flux_256_euler" / "components.safetensors"))["noise"]
    assert torch.equal(prepare_noise(fixed, 42), reference)
    assert fix_empty_latent(torch.zeros(1, 4, 32, 32), "qwenimage").shape == (1, 16, 1, 32, 32)
    assert fix_empty_latent(torch.zeros(1, 4, 8, 8), "sd1").shape == (1, 4, 8, 8)
    filled = torch.ones(1, 4, 8, 8)
    assert fix_empty_latent(filled, "flux") is filled           # a real latent is never changed


def test_latent_upscale_of_16_channel_and_5d_latents(ctx):
    """Upscale Latent on a Flux latent and, frame by frame, on a Wan-format (Qwen-Image) latent."""
    from diffmesh.nodes import latent

    (flux,) = latent.latent_upscale(ctx, {"samples": torch.randn(1, 16, 8, 8)}, "bilinear", 128, 96, "disabled")
    assert flux["samples"].shape == (1, 16, 12, 16)
    video = torch.randn(1, 16, 2, 8, 8)
    (out,) = latent.latent_upscale_by(ctx, {"samples": video}, "nearest-exact", 2.0)
    assert out["samples"].shape == (1, 16, 2, 16, 16)
    assert torch.equal(out["samples"][:, :, 1, ::2, ::2], video[:, :, 1])

"""ComfyUI's custom-sampling nodes (SamplerCustom, SamplerCustomAdvanced, KSamplerSelect,
BasicScheduler, BasicGuider, CFGGuider, RandomNoise, DisableNoise) and the new loader / VAE /
conditioning nodes on tiny random models, through the real runtime (in-process CPU worker).
The custom-sampling graph must give KSampler's latent bit for bit, as it does in ComfyUI."""

import argparse

import pytest
import torch

from diffmesh.runtime import Runtime


@pytest.fixture(scope="module")
def runtime(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    ns = argparse.Namespace(base_directory=str(base), models_dir=str(models_base / "models"), cpu=True)
    rt = Runtime.build(ns)
    yield rt
    rt.close()


BASE = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
}


def _ksampler(seed=5, cfg=7.0, denoise=1.0, sampler="euler", positive=("6", 0)):
    return {"class_type": "KSampler", "inputs": {
        "seed": seed, "steps": 3, "cfg": cfg, "sampler_name": sampler, "scheduler": "normal", "denoise": denoise,
        "model": ["4", 0], "positive": list(positive), "negative": ["7", 0], "latent_image": ["5", 0]}}


def _latent(runtime, nodes: dict, node: str, slot: int = 0) -> torch.Tensor:
    prompt = {**BASE, **nodes, "99": {"class_type": "SaveLatent", "inputs": {"samples": [node, slot],
                                                                            "filename_prefix": "t"}}}
    result = runtime.executor.execute(prompt, "t", {}, None)
    assert result.status == "success", result.error or result.validation_error or result.node_errors
    return runtime.executor.cache.get(node).outputs[slot][0]["samples"]


def _advanced(noise: dict, guider: dict, denoise=1.0, sampler="euler"):
    return {
        "10": noise, "11": guider,
        "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "13": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": 3,
                                                          "denoise": denoise}},
        "14": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["10", 0], "guider": ["11", 0],
                                                                 "sampler": ["12", 0], "sigmas": ["13", 0],
                                                                 "latent_image": ["5", 0]}}}


CFG_GUIDER = {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                    "cfg": 7.0}}


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_sampler_custom_advanced_equals_ksampler(runtime, sampler):
    expected = _latent(runtime, {"3": _ksampler(sampler=sampler)}, "3")
    got = _latent(runtime, _advanced({"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}, CFG_GUIDER,
                                     sampler=sampler), "14")
    assert torch.equal(got, expected)
    denoised = runtime.executor.cache.get("14").outputs[1][0]["samples"]
    assert denoised.shape == got.shape and torch.isfinite(denoised).all()


def test_sampler_custom_equals_ksampler_and_basic_scheduler_honours_denoise(runtime):
    expected = _latent(runtime, {"3": _ksampler(denoise=0.6)}, "3")
    nodes = _advanced({"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}, CFG_GUIDER, denoise=0.6)
    nodes["14"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["4", 0], "add_noise": True, "noise_seed": 5, "cfg": 7.0, "positive": ["6", 0],
        "negative": ["7", 0], "sampler": ["12", 0], "sigmas": ["13", 0], "latent_image": ["5", 0]}}
    del nodes["10"], nodes["11"]
    assert torch.equal(_latent(runtime, nodes, "14"), expected)


def test_basic_guider_is_cfg_one_with_the_positive_only(runtime):
    expected = _latent(runtime, {"3": _ksampler(cfg=1.0)}, "3")
    guider = {"class_type": "BasicGuider", "inputs": {"model": ["4", 0], "conditioning": ["6", 0]}}
    got = _latent(runtime, _advanced({"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}, guider), "14")
    assert torch.equal(got, expected)


def test_disable_noise_matches_ksampler_advanced_without_added_noise(runtime):
    advanced = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["4", 0], "add_noise": "disable", "noise_seed": 9, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
        "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    expected = _latent(runtime, {"3": advanced}, "3")
    got = _latent(runtime, _advanced({"class_type": "DisableNoise", "inputs": {}}, CFG_GUIDER), "14")
    assert torch.equal(got, expected)


def test_vae_encode_tiled_and_checkpoint_loader(runtime):
    image = {"20": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": 0x3080C0}}}
    plain = _latent(runtime, {**image, "21": {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0],
                                                                                      "vae": ["4", 2]}}}, "21")
    tiled = _latent(runtime, {**image, "21": {"class_type": "VAEEncodeTiled", "inputs": {
        "pixels": ["20", 0], "vae": ["4", 2], "tile_size": 512, "overlap": 64, "temporal_size": 64,
        "temporal_overlap": 8}}}, "21")
    assert plain.shape == (1, 4, 8, 8) and torch.equal(tiled, plain)
    loader = {"class_type": "CheckpointLoader", "inputs": {"config_name": "v1-inference.yaml",
                                                           "ckpt_name": "tiny-sd1.safetensors"}}
    prompt = {**BASE, "4": loader, "3": _ksampler(),
              "99": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "t"}}}
    runtime.executor.reset_cache()
    result = runtime.executor.execute(prompt, "t", {}, None, outputs_to_execute=["99"])   # no configs folder here
    assert result.status == "success", result.error
    assert torch.equal(runtime.executor.cache.get("3").outputs[0][0]["samples"], _latent(runtime, {"3": _ksampler()}, "3"))


def test_conditioning_options_reach_the_sampler(runtime):
    plain = _latent(runtime, {"3": _ksampler()}, "3")
    full_range = {"30": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["6", 0],
                                                                                 "start": 0.0, "end": 1.0}}}
    assert torch.equal(_latent(runtime, {**full_range, "3": _ksampler(positive=("30", 0))}, "3"), plain)
    late = {"30": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["6", 0],
                                                                           "start": 0.5, "end": 1.0}},
            "31": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["7", 0],
                                                                           "start": 0.0, "end": 0.5}},
            "32": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["30", 0],
                                                                   "conditioning_2": ["31", 0]}}}
    assert not torch.equal(_latent(runtime, {**late, "3": _ksampler(positive=("32", 0))}, "3"), plain)
    mixed = {"40": {"class_type": "ConditioningAverage", "inputs": {"conditioning_to": ["6", 0],
                                                                   "conditioning_from": ["7", 0],
                                                                   "conditioning_to_strength": 1.0}}}
    assert torch.equal(_latent(runtime, {**mixed, "3": _ksampler(positive=("40", 0))}, "3"), plain)
    mask = {"50": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["51", 0], "left": 32, "top": 0,
                                                                   "right": 0, "bottom": 0, "feathering": 0}},
            "51": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 64, "batch_size": 1, "color": 0}},
            "52": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["6", 0], "mask": ["50", 1],
                                                                   "strength": 1.0, "set_cond_area": "default"}}}
    masked = _latent(runtime, {**mask, "3": _ksampler(positive=("52", 0))}, "3")
    assert torch.isfinite(masked).all() and not torch.equal(masked, plain)

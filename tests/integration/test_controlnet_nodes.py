"""ControlNet nodes on the tiny SD1 model, run through the real runtime (in-process CPU worker)."""

import argparse
import os

import pytest
import torch

from diffmesh.models import testmodels_controlnet as tcn
from diffmesh.runtime import Runtime


@pytest.fixture(scope="module")
def models_dir(tiny_models, tmp_path_factory):
    models = tmp_path_factory.mktemp("cn") / "models"
    (models / "checkpoints").mkdir(parents=True)
    os.symlink(tiny_models["sd1"], models / "checkpoints" / "tiny-sd1.safetensors")
    (models / "controlnet").mkdir()
    (models / "t2i_adapter").mkdir()
    tcn.write(models / "controlnet" / "tiny-cn.safetensors", "cldm")
    tcn.write(models / "controlnet" / "tiny-cn-diffusers.safetensors", "diffusers")
    tcn.write(models / "t2i_adapter" / "tiny-cn-pth.safetensors", "cldm_pth")
    tcn.write_adapter(models / "t2i_adapter" / "tiny-t2i.safetensors")
    tcn.write_sd1_two_resblocks(models / "checkpoints" / "tiny-sd1-rb2.safetensors")
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(2)}, str(models / "controlnet" / "not-a-controlnet.safetensors"))
    return models


@pytest.fixture(scope="module")
def runtime(models_dir, tmp_path_factory):
    ns = argparse.Namespace(base_directory=str(tmp_path_factory.mktemp("base")), models_dir=str(models_dir), cpu=True)
    rt = Runtime.build(ns)
    yield rt
    rt.close()


def _hint_image():
    g = torch.Generator().manual_seed(5)
    return torch.rand((1, 48, 80, 3), generator=g)      # another aspect ratio than the latent: center crop


def prompt(control=None, seed=3, steps=2, old=False, ckpt="tiny-sd1.safetensors"):
    p = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                  "positive": ["6", 0], "negative": ["7", 0],
                                                  "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    pos, neg = ["6", 0], ["7", 0]
    for i, (name, strength, start, end) in enumerate(control or ()):
        load, apply = f"{20 + 2 * i}", f"{21 + 2 * i}"
        p[load] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
        if old:
            p[apply] = {"class_type": "ControlNetApply", "inputs": {"conditioning": pos, "control_net": [load, 0],
                                                                    "image": ["30", 0], "strength": strength}}
            pos = [apply, 0]
        else:
            p[apply] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": pos, "negative": neg, "control_net": [load, 0], "image": ["30", 0],
                "strength": strength, "start_percent": start, "end_percent": end, "vae": ["4", 2]}}
            pos, neg = [apply, 0], [apply, 1]
    p["3"]["inputs"].update(positive=pos, negative=neg)
    return p


def sample(runtime, p):
    result = runtime.executor.execute(p, "t", {}, None)
    assert result.status == "success", result.error or result.validation_error or result.node_errors
    return runtime.executor.cache.get("3").outputs[0][0]["samples"]


@pytest.fixture(scope="module")
def image_prompt(runtime):
    """A tiny IMAGE made by nodes (EmptyImage-free: a decoded random latent), node id 30."""
    def add(p):
        p["31"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 80, "height": 48, "batch_size": 1}}
        p["30"] = {"class_type": "VAEDecode", "inputs": {"samples": ["31", 0], "vae": ["4", 2]}}
        return p
    return add


def test_strength_zero_gives_exactly_the_plain_latent(runtime, image_prompt):
    plain = sample(runtime, image_prompt(prompt()))
    zero = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 0.0, 0.0, 1.0)])))
    assert torch.equal(plain, zero)


@pytest.mark.parametrize("name", ["tiny-cn.safetensors", "tiny-cn-diffusers.safetensors", "tiny-cn-pth.safetensors"])
def test_a_controlnet_in_each_layout_changes_the_latent(runtime, image_prompt, name):
    plain = sample(runtime, image_prompt(prompt()))
    controlled = sample(runtime, image_prompt(prompt([(name, 1.0, 0.0, 1.0)])))
    assert controlled.shape == plain.shape and torch.isfinite(controlled).all()
    assert (controlled - plain).abs().max() > 1e-3


def test_a_step_range_outside_the_schedule_gives_the_plain_latent(runtime, image_prompt):
    plain = sample(runtime, image_prompt(prompt()))
    late = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 1.0, 1.0, 1.0)])))
    assert torch.equal(plain, late)
    # only the first of two steps controlled: differs from both the plain and the fully controlled run
    half = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 1.0, 0.0, 0.5)])))
    full = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 1.0, 0.0, 1.0)])))
    assert not torch.equal(half, plain) and not torch.equal(half, full)


def test_strength_scales_the_effect(runtime, image_prompt):
    plain = sample(runtime, image_prompt(prompt()))
    weak = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 0.1, 0.0, 1.0)])))
    strong = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 2.0, 0.0, 1.0)])))
    assert (weak - plain).abs().mean() < (strong - plain).abs().mean()


def test_old_apply_node_also_controls_the_negative_side(runtime, image_prompt):
    """ControlNetApply touches only `conditioning`, yet its control reaches the uncond too (as in ComfyUI),
    so it equals the advanced node over the whole schedule, number for number."""
    old = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 1.0, 0.0, 1.0)], old=True)))
    advanced = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 1.0, 0.0, 1.0)])))
    assert torch.equal(old, advanced)


def test_two_chained_controlnets_differ_from_either_alone(runtime, image_prompt):
    chained = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 1.0, 0.0, 1.0),
                                                   ("tiny-cn-diffusers.safetensors", 1.0, 0.0, 1.0)])))
    first = sample(runtime, image_prompt(prompt([("tiny-cn.safetensors", 1.0, 0.0, 1.0)])))
    second = sample(runtime, image_prompt(prompt([("tiny-cn-diffusers.safetensors", 1.0, 0.0, 1.0)])))
    assert not torch.equal(chained, first) and not torch.equal(chained, second)


def test_loader_lists_the_t2i_adapter_folder_and_rejects_other_files(runtime, image_prompt):
    info = runtime.registry.object_info(runtime.paths)["ControlNetLoader"]
    names = info["input"]["required"]["control_net_name"][0]
    assert {"tiny-cn.safetensors", "tiny-cn-pth.safetensors"} <= set(names)
    result = runtime.executor.execute(image_prompt(prompt([("not-a-controlnet.safetensors", 1.0, 0.0, 1.0)])),
                                      "bad", {}, None)
    assert result.status != "success"
    assert "controlnet file is invalid" in str(result.error)


def test_diff_controlnet_needs_and_uses_its_model(runtime, models_dir, image_prompt, tiny_models):
    from safetensors.torch import load_file

    base = load_file(tiny_models["sd1"])
    diff = {k: v - base["model.diffusion_model." + k[len("control_model."):]]
            if "model.diffusion_model." + k[len("control_model."):] in base else v
            for k, v in tcn.cldm_state_dict(31, "control_model.").items()}
    diff["difference"] = torch.zeros(1)
    from diffmesh.models.testspecs import save_safetensors_deterministic

    save_safetensors_deterministic(diff, str(models_dir / "controlnet" / "tiny-cn-diff.safetensors"), {})
    p = image_prompt(prompt([("tiny-cn-diff.safetensors", 1.0, 0.0, 1.0)]))
    p["20"] = {"class_type": "DiffControlNetLoader", "inputs": {"model": ["4", 0],
                                                                "control_net_name": "tiny-cn-diff.safetensors"}}
    same = image_prompt(prompt([("tiny-cn-pth.safetensors", 1.0, 0.0, 1.0)]))
    runtime.executor.reset_cache()
    # (w - base) + base rounds in float32: equal up to that rounding (latents are O(100) here)
    assert torch.allclose(sample(runtime, p), sample(runtime, same), rtol=1e-5, atol=1e-3)
    without_model = image_prompt(prompt([("tiny-cn-diff.safetensors", 1.0, 0.0, 1.0)]))
    result = runtime.executor.execute(without_model, "nomodel", {}, None)
    assert result.status != "success" and "DiffControlNetLoader" in str(result.error)


def test_t2i_adapter_from_the_t2i_adapter_folder(runtime, image_prompt):
    """A T2I-adapter loads through ControlNetLoader; strength 0 and a step range past the schedule
    leave the latent exactly as without it (on an SD1 UNet with two res blocks per level, the layout
    the adapter's features are placed for)."""
    rb2 = "tiny-sd1-rb2.safetensors"
    plain = sample(runtime, image_prompt(prompt(ckpt=rb2)))
    adapted = sample(runtime, image_prompt(prompt([("tiny-t2i.safetensors", 1.0, 0.0, 1.0)], ckpt=rb2)))
    assert (adapted - plain).abs().max() > 1e-3
    for strength, start, end in ((0.0, 0.0, 1.0), (1.0, 1.0, 1.0)):
        same = sample(runtime, image_prompt(prompt([("tiny-t2i.safetensors", strength, start, end)], ckpt=rb2)))
        assert torch.equal(same, plain)


# ComfyUI 0.8.0's nodes.py / comfy_extras/nodes_controlnet.py, field by field
COMFY_SCHEMAS = {
    "ControlNetLoader": {
        "input": {"required": {"control_net_name": "<files>"}}, "output": ["CONTROL_NET"],
        "output_name": ["CONTROL_NET"], "display_name": "Load ControlNet Model", "category": "loaders",
        "python_module": "nodes", "search_aliases": ["controlnet", "control net", "cn", "load controlnet",
                                                     "controlnet loader"]},
    "DiffControlNetLoader": {
        "input": {"required": {"model": ["MODEL"], "control_net_name": "<files>"}}, "output": ["CONTROL_NET"],
        "output_name": ["CONTROL_NET"], "display_name": "Load ControlNet Model (diff)", "category": "loaders",
        "python_module": "nodes"},
    "ControlNetApply": {
        "input": {"required": {"conditioning": ["CONDITIONING"], "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
                               "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]}},
        "output": ["CONDITIONING"], "output_name": ["CONDITIONING"], "display_name": "Apply ControlNet (OLD)",
        "category": "conditioning/controlnet", "deprecated": True, "python_module": "nodes"},
    "ControlNetApplyAdvanced": {
        "input": {"required": {
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
            "image": ["IMAGE"], "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}],
            "start_percent": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}],
            "end_percent": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}]},
            "optional": {"vae": ["VAE"]}},
        "output": ["CONDITIONING", "CONDITIONING"], "output_name": ["positive", "negative"],
        "display_name": "Apply ControlNet", "category": "conditioning/controlnet", "python_module": "nodes",
        "search_aliases": ["controlnet", "apply controlnet", "use controlnet", "control net"]},
    "SetUnionControlNetType": {
        "input": {"required": {"control_net": ["CONTROL_NET"], "type": [[
            "auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
            "segment", "tile", "repaint"]]}},
        "output": ["CONTROL_NET"], "output_name": ["CONTROL_NET"], "category": "conditioning/controlnet",
        "python_module": "comfy_extras.nodes_controlnet"},
}


@pytest.mark.parametrize("name", sorted(COMFY_SCHEMAS))
def test_schemas_equal_comfyui(runtime, name):
    info = runtime.registry.object_info(runtime.paths)[name]
    files = runtime.paths.list("controlnet")
    for key, expected in COMFY_SCHEMAS[name].items():
        if key == "input":
            expected = {section: {k: ([files] if v == "<files>" else v) for k, v in inputs.items()}
                        for section, inputs in expected.items()}
            assert info["input_order"] == {s: list(v) for s, v in expected.items()}
        assert info[key] == expected, key
    assert info.get("deprecated", False) == COMFY_SCHEMAS[name].get("deprecated", False)


def test_controlnet_on_two_worker_processes_matches_one_worker(runtime, models_dir, image_prompt, tmp_path_factory):
    """The applied controls cross into worker processes with the job. CFG parallel runs the control on
    each half; batch parallel on each worker's rows, with the hint rows (two different images here)
    those rows get in one batch."""
    p = image_prompt(prompt([("tiny-cn.safetensors", 1.0, 0.0, 1.0)]))
    p["5"]["inputs"]["batch_size"] = 2
    p["32"] = {"class_type": "ImageInvert", "inputs": {"image": ["30", 0]}}
    p["33"] = {"class_type": "ImageBatch", "inputs": {"image1": ["30", 0], "image2": ["32", 0]}}
    p["21"]["inputs"]["image"] = ["33", 0]
    single = sample(runtime, p)
    ns = argparse.Namespace(base_directory=str(tmp_path_factory.mktemp("base2")), models_dir=str(models_dir),
                            cpu=True, workers=2, parallel="none")
    rt = Runtime.build(ns)
    try:
        for strategy in ("cfg", "batch"):
            p["10"] = {"class_type": "MultiGPU_WorkUnits", "inputs": {"model": ["4", 0], "max_gpus": 2,
                                                                      "strategy": strategy}}
            p["3"]["inputs"]["model"] = ["10", 0]
            assert torch.allclose(sample(rt, p), single, rtol=1e-4, atol=1e-3), strategy
    finally:
        rt.close()

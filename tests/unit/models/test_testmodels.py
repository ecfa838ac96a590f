"""The random-model writers: layouts other packages' tests rely on."""

import importlib.util

from safetensors import safe_open

from diffmesh.models import testmodels


def test_tiny_checkpoints_use_original_single_file_prefixes(tiny_models):
    expected = {"sd1": "cond_stage_model.transformer.text_model.", "sd2": "cond_stage_model.model.",
                "sd2v": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}
    for family, prefix in expected.items():
        with safe_open(tiny_models[family], "pt") as f:
            keys = list(f.keys())
        assert any(k.startswith("model.diffusion_model.") for k in keys)
        assert any(k.startswith("first_stage_model.decoder.") for k in keys)
        assert any(k.startswith(prefix) for k in keys), family


def test_full_sd15_spec_matches_reference_script(reference_dir):
    spec = importlib.util.spec_from_file_location("make_sd15_random", reference_dir / "make_sd15_random.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    assert testmodels._sd1_spec("full").items == ref.build_spec("full").items


def test_writing_tiny_models_twice_gives_identical_bytes(tmp_path):
    a = testmodels.make_test_model("sd2v", "tiny", tmp_path / "a.safetensors")
    b = testmodels.make_test_model("sd2v", "tiny", tmp_path / "b.safetensors")
    assert open(a, "rb").read() == open(b, "rb").read()

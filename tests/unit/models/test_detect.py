"""Family detection from keys and shapes only."""

import pytest
import torch
from safetensors.torch import save_file

from diffmesh.errors import ModelError
from diffmesh.models.detect import detect_family, detect_kind


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2v", "sdxl"])
def test_each_tiny_family_is_detected(tiny_models, family):
    assert detect_family(tiny_models[family]) == family


def test_non_sd_file_raises_model_error_naming_file_and_contents(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelError) as err:
        detect_family(path)
    text = str(err.value)
    assert "other.safetensors" in text and "encoder" in text


def test_vae_only_file_is_reported_as_vae_not_checkpoint(tiny_model_files):
    vae = tiny_model_files["vae"]["tiny"]
    assert detect_kind(vae) == "vae"
    with pytest.raises(ModelError, match="VAE"):
        detect_family(vae)


def test_kinds_of_lora_and_embedding_files(tiny_model_files):
    assert detect_kind(tiny_model_files["loras"]["sd1_kohya"]) == "lora"
    assert detect_kind(tiny_model_files["loras"]["sd1_peft"]) == "lora"
    assert detect_kind(tiny_model_files["embeddings"]["sd1"]) == "embedding"
    assert detect_kind(tiny_model_files["checkpoints"]["sdxl"]) == "checkpoint"


def test_ckpt_file_is_detected_through_safe_torch_load(tiny_models, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(tiny_models["sd2v"])}, path)
    assert detect_family(path) == "sd2v"


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        detect_family(tmp_path / "nope.safetensors")

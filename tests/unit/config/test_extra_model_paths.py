"""`--extra-model-paths-config`: folders of a yaml resolve like ComfyUI's (relative to the yaml's
own folder, whatever the working directory and however the yaml's path was given)."""

from __future__ import annotations

from diffmesh.config.paths import Paths

YAML_NO_BASE = "mine:\n  checkpoints: models/ckpt\n  loras: |\n    models/lora\n    /abs/loras\n"
YAML_RELATIVE_BASE = "mine:\n  base_path: shared\n  vae: vae_files\n"


def _layout(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "no_base.yaml").write_text(YAML_NO_BASE)
    (conf / "relative_base.yaml").write_text(YAML_RELATIVE_BASE)
    return conf


def test_relative_yaml_path_without_base_path_resolves_under_the_yaml_folder(tmp_path, monkeypatch):
    conf = _layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    paths = Paths.build(tmp_path / "base", extra_model_paths=["conf/no_base.yaml"])    # as the CLI flag does
    assert (conf / "models" / "ckpt").resolve() in paths.models["checkpoints"]
    assert (conf / "models" / "lora").resolve() in paths.models["loras"]
    assert not any("conf/conf" in str(p) for key in paths.models for p in paths.models[key])


def test_absolute_folder_lines_stay_absolute(tmp_path, monkeypatch):
    _layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    paths = Paths.build(tmp_path / "base")
    paths.load_extra_config("conf/no_base.yaml")
    assert any(str(p).endswith("/abs/loras") and str(p).startswith("/abs") for p in paths.models["loras"])


def test_relative_base_path_is_taken_from_the_yaml_folder(tmp_path, monkeypatch):
    conf = _layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    paths = Paths.build(tmp_path / "base")
    paths.load_extra_config("conf/relative_base.yaml")
    assert (conf / "shared" / "vae_files").resolve() in paths.models["vae"]


def test_yaml_given_by_absolute_path_gives_the_same_folders(tmp_path, monkeypatch):
    conf = _layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    relative, absolute = Paths.build(tmp_path / "base"), Paths.build(tmp_path / "base")
    relative.load_extra_config("conf/no_base.yaml")
    absolute.load_extra_config(conf / "no_base.yaml")
    assert relative.models["checkpoints"] == absolute.models["checkpoints"]

"""`diffmesh` command line: run end to end, and one clear message (no traceback) for bad input."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from diffmesh.cli import main


def ui_graph():
    """A UI-format (litegraph) version of `sd1_workflow`, with a note and a reroute."""
    def node(id_, type_, inputs=(), outputs=(), widgets=None, order=0):
        return {"id": id_, "type": type_, "mode": 0, "order": order, "widgets_values": widgets or [],
                "inputs": [{"name": n, "type": t, "link": l} for n, t, l in inputs],
                "outputs": [{"name": t, "type": t, "links": ls} for t, ls in outputs]}
    nodes = [node(4, "CheckpointLoaderSimple", outputs=[("MODEL", [1]), ("CLIP", [3, 5]), ("VAE", [8])],
                  widgets=["tiny-sd1.safetensors"]),
             node(5, "EmptyLatentImage", outputs=[("LATENT", [2])], widgets=[64, 64, 1]),
             node(6, "CLIPTextEncode", [("clip", "CLIP", 3)], [("CONDITIONING", [4])], ["a cat"]),
             node(7, "CLIPTextEncode", [("clip", "CLIP", 5)], [("CONDITIONING", [6])], [""]),
             node(3, "KSampler", [("model", "MODEL", 1), ("positive", "CONDITIONING", 4),
                                  ("negative", "CONDITIONING", 6), ("latent_image", "LATENT", 2)],
                  [("LATENT", [7])], [5, "fixed", 1, 7.0, "euler", "normal", 1.0]),
             node(10, "Reroute", [("", "*", 8)], [("VAE", [10])]),
             node(8, "VAEDecode", [("samples", "LATENT", 7), ("vae", "VAE", 10)], [("IMAGE", [9])]),
             node(9, "SaveImage", [("images", "IMAGE", 9)], widgets=["ComfyUI"]),
             node(11, "Note", widgets=["just a note"])]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
             [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
             [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 10, 0, "VAE"], [10, 10, 0, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]]
    return {"id": "x", "nodes": nodes, "links": links, "version": 0.4}


def sd1_workflow(ckpt="tiny-sd1.safetensors"):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                                                  "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                  "positive": ["6", 0], "negative": ["7", 0],
                                                  "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "cli", "images": ["8", 0]}},
    }


@pytest.fixture
def run_cli(models_base, tmp_path, capsys):
    def run(workflow, *flags):
        path = tmp_path / "wf.json"
        path.write_text(workflow if isinstance(workflow, str) else json.dumps(workflow))
        code = main(["run", str(path), "--base-directory", str(tmp_path), "--models-dir",
                     str(models_base / "models"), "--cpu", *flags])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_run_writes_a_png_with_prompt_metadata(run_cli, tmp_path):
    code, out, err = run_cli(sd1_workflow())
    assert code == 0, err
    png = tmp_path / "output" / "cli_00001_.png"
    assert f"saved {png}" in out
    image = Image.open(png)
    assert image.size == (64, 64)
    assert json.loads(image.text["prompt"])["3"]["class_type"] == "KSampler"


def test_run_of_a_ui_workflow_stores_the_workflow_in_the_png(run_cli, tmp_path):
    code, out, err = run_cli(ui_graph())
    assert code == 0, err
    image = Image.open(tmp_path / "output" / "ComfyUI_00001_.png")
    assert json.loads(image.text["workflow"])["id"] == "x"
    assert json.loads(image.text["prompt"])["3"]["inputs"]["seed"] == 5


def test_missing_workflow_file(models_base, tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.json"), "--base-directory", str(tmp_path), "--cpu"]) == 1
    err = capsys.readouterr().err
    assert "workflow file not found" in err and "Traceback" not in err


def test_malformed_json(run_cli):
    code, _, err = run_cli("{not json")
    assert code == 1 and "is not valid JSON" in err and err.count("\n") == 1


def test_unknown_node(run_cli):
    wf = sd1_workflow()
    wf["8"]["class_type"] = "VAEDecodeX"
    code, _, err = run_cli(wf)
    assert code == 1 and "Cannot execute because node VAEDecodeX does not exist." in err


def test_wrong_link_type(run_cli):
    wf = sd1_workflow()
    wf["8"]["inputs"]["vae"] = ["4", 0]
    code, _, err = run_cli(wf)
    assert code == 1 and "node 8 (VAEDecode): Return type mismatch" in err and "received_type(MODEL)" in err


def test_missing_model(run_cli):
    code, _, err = run_cli(sd1_workflow(ckpt="absent.safetensors"))
    assert code == 1 and "node 4 (CheckpointLoaderSimple): Value not in list" in err and "absent.safetensors" in err


def test_bad_value(run_cli):
    wf = sd1_workflow()
    wf["3"]["inputs"]["steps"] = 0
    code, _, err = run_cli(wf)
    assert code == 1 and "Value 0 smaller than min of 1" in err


def test_flag_errors_exit_2(tmp_path, capsys):
    assert main(["run"]) == 2
    assert main(["run", "x.json", "--workers", "many"]) == 2
    assert main(["nonsense"]) == 2


def test_make_test_model_writes_a_tiny_checkpoint(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["make-test-model", "--family", "sd1", "--size", "tiny", "--out", str(out)]) == 0
    from diffmesh.models.detect import detect_family

    assert detect_family(out) == "sd1"


def test_entry_point_reports_errors_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffmesh.cli", "run", str(tmp_path / "none.json"), "--cpu",
                           "--base-directory", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "not found" in proc.stderr

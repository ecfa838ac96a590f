"""`diffmesh serve` end to end with the real runtime and tiny SD1 models: queue txt2img over
HTTP, follow it on the websocket, fetch the image, and check what ComfyUI clients rely on."""

from __future__ import annotations

import io
import json
import struct

import pytest
from serverproc import ServerProcess, events_until_done, wait_for_history
from websocket import create_connection

STEPS = 3


def txt2img(ckpt: str = "tiny-sd1.safetensors", seed: int = 1, steps: int = STEPS) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


@pytest.fixture(scope="module")
def model_server(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    extra = base / "extra_ckpts"
    extra.mkdir()
    (extra / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    config = base / "extra_model_paths.yaml"
    config.write_text(f"broken:\n  checkpoints: {extra}\n")
    with ServerProcess(base / "base", "--models-dir", str(models_base / "models"),
                       "--extra-model-paths-config", str(config)) as server:
        server.startup_s = server.wait_ready()
        yield server


def _connect(server, sid: str, metadata: bool = True):
    ws = create_connection(f"{server.ws_url}?clientId={sid}", timeout=120)
    assert json.loads(ws.recv())["data"]["sid"] == sid
    ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": metadata}}))
    assert json.loads(ws.recv())["type"] == "feature_flags"
    return ws


def test_tiny_txt2img_runs_with_events_in_order_previews_and_image_via_view(model_server):
    ws = _connect(model_server, "e2e-client")
    try:
        with model_server.client() as http:
            answer = http.post("/api/prompt", json={"prompt": txt2img(), "client_id": "e2e-client",
                                                    "extra_data": {"preview_method": "latent2rgb",
                                                                   "extra_pnginfo": {"workflow": {"id": "w1"}}}})
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            events, frames = events_until_done(ws, prompt_id, timeout=120.0)
            entry = wait_for_history(http, prompt_id)
            kinds = [e["type"] for e in events]
            assert kinds.index("execution_start") < kinds.index("execution_cached") < kinds.index("executing")
            ran = [e["data"]["node"] for e in events if e["type"] == "executing" and e["data"]["node"]]
            assert sorted(ran) == ["3", "4", "5", "6", "7", "8", "9"] and ran.index("3") < ran.index("8")
            progress = [e["data"] for e in events if e["type"] == "progress"]
            assert [(p["value"], p["max"], p["node"]) for p in progress] == [(i, STEPS, "3") for i in range(1, STEPS + 1)]
            assert "progress_state" in kinds
            assert kinds[-4:] == ["executed", "execution_success", "status", "executing"] or \
                kinds[-3:] == ["execution_success", "status", "executing"]
            assert len(frames) == STEPS and all(struct.unpack(">I", f[:4])[0] == 4 for f in frames)
            executed = next(e["data"] for e in events if e["type"] == "executed")
            image = executed["output"]["images"][0]
            assert executed["node"] == "9" and image["type"] == "output"
            view = http.get("/api/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                                 "type": "output"})
            assert view.status_code == 200 and view.headers["content-type"] == "image/png"
            from PIL import Image

            png = Image.open(io.BytesIO(view.content))
            assert png.size == (64, 64)
            assert json.loads(png.text["prompt"])["9"]["class_type"] == "SaveImage"
            assert json.loads(png.text["workflow"]) == {"id": "w1"}
            preview = http.get("/api/view", params={"filename": image["filename"], "preview": "webp;50"})
            assert preview.headers["content-type"] == "image/webp"
    finally:
        ws.close()
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["9"]
    assert entry["outputs"] == {"9": {"images": [image]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["meta"]["9"]["node_id"] == "9"


def test_invalid_prompt_gets_400_with_node_errors_in_comfyui_shape(model_server):
    prompt = txt2img(ckpt="no-such-model.safetensors")
    prompt["3"]["inputs"]["steps"] = 0
    with model_server.client() as http:
        response = http.post("/api/prompt", json={"prompt": prompt})
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert {"4", "3"} <= set(body["node_errors"])
    loader = body["node_errors"]["4"]
    assert loader["class_type"] == "CheckpointLoaderSimple" and loader["dependent_outputs"] == ["9"]
    assert loader["errors"][0]["type"] == "value_not_in_list"
    assert loader["errors"][0]["extra_info"]["input_name"] == "ckpt_name"
    assert body["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"


def test_node_that_raises_gives_execution_error_and_the_server_keeps_serving(model_server):
    ws = _connect(model_server, "err-client")
    try:
        with model_server.client() as http:
            answer = http.post("/api/prompt", json={"prompt": txt2img(ckpt="broken.safetensors"),
                                                    "client_id": "err-client"})
            assert answer.status_code == 200, answer.text
            events, _ = events_until_done(ws, answer.json()["prompt_id"], timeout=120.0)
            error = next(e["data"] for e in events if e["type"] == "execution_error")
            assert error["node_id"] == "4" and error["node_type"] == "CheckpointLoaderSimple"
            assert error["exception_message"] and error["traceback"]
            entry = wait_for_history(http, answer.json()["prompt_id"])
            assert entry["status"] == {**entry["status"], "status_str": "error", "completed": False}
            assert http.get("/api/system_stats").status_code == 200
            again = http.post("/api/prompt", json={"prompt": txt2img(seed=2)}).json()
            assert wait_for_history(http, again["prompt_id"])["status"]["completed"] is True
    finally:
        ws.close()


def test_system_stats_reports_devices_and_placement_once_the_runtime_is_built(model_server):
    with model_server.client() as http:
        http.get("/api/object_info")  # waits for the runtime
        stats = http.get("/api/system_stats").json()
    assert stats["diffmesh"]["runtime_ready"] is True
    assert any(d["type"] == "cpu" for d in stats["devices"])
    print(f"\nstart-up until /system_stats answered: {model_server.startup_s:.2f} s")

"""ComfyUI custom node packs through a real `diffmesh serve`: the packs of tests/data/custom_packs
use `folder_paths`, `comfy.utils`, `comfy.model_management`, `comfy.samplers`, `comfy.comfy_types`,
`nodes`, `server.PromptServer` (send_sync, their own routes) and `comfy_api.latest` (V3) as
published packs do; their web extension is served; a pack importing a name diffmesh lacks is logged
in one line and skipped; SaveImageWebsocket sends each image as a full-size PNG binary frame."""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image
from serverproc import ServerProcess, wait_for_history

PACKS = Path(__file__).resolve().parents[1] / "data" / "custom_packs"


@pytest.fixture(scope="module")
def compat_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("compat") / "base"
    (base / "models" / "compat_models").mkdir(parents=True)
    (base / "models" / "compat_models" / "hello.txt").write_text("hello from a pack model folder\n")
    with ServerProcess(base, "--custom-nodes-dir", str(PACKS), "--preview-method", "none") as server:
        server.wait_ready()
        with server.client() as http:
            http.get("/api/object_info")                        # waits until the packs are loaded
        yield server


def _events(ws, prompt_id: str, timeout: float = 60.0):
    """(JSON events, binary frames) of the socket until `prompt_id` ends."""
    events, frames = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = ws.recv()
        if isinstance(message, bytes):
            frames.append(message)
            continue
        event = json.loads(message)
        events.append(event)
        data = event.get("data") or {}
        if event["type"] in ("execution_success", "execution_error", "execution_interrupted") \
                and data.get("prompt_id") == prompt_id:
            return events, frames
    raise AssertionError(f"prompt {prompt_id} did not end: {events}")


def test_v1_and_v3_pack_nodes_show_with_comfyui_schemas(compat_server):
    with compat_server.client() as http:
        info = http.get("/api/object_info").json()
        samplers = info["KSampler"]["input"]["required"]["sampler_name"][0]
    read = info["CompatReadModel"]
    assert read["python_module"] == "custom_nodes.compat_pack" and read["display_name"] == "Read a compat model"
    assert read["input"]["required"]["model_name"] == [["hello.txt"]]         # folder_paths' own folder
    assert read["input"]["required"]["sampler"] == [samplers]                 # comfy.samplers.KSampler.SAMPLERS
    assert read["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert info["CompatResize"]["input"]["required"]["width"] == ["INT", {"default": 64, "min": 1, "max": 16384}]
    solid = info["CompatSolidImage"]
    assert solid["python_module"] == "custom_nodes.compat_v3" and solid["display_name"] == "Solid image (V3)"
    assert solid["input"]["required"]["width"] == ["INT", {"default": 48, "min": 8, "max": 4096, "step": 8}]
    assert solid["input"]["required"]["value"][1]["display"] == "slider"
    assert solid["input"]["required"]["channel"] == ["COMBO", {"default": "green", "options": ["red", "green", "blue"]}]
    assert solid["input"]["optional"]["label"] == ["STRING", {"default": "solid", "multiline": False}]
    assert solid["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert solid["output"] == ["IMAGE", "STRING"] and solid["output_name"] == ["image", "STRING"]
    ws_node = info["SaveImageWebsocket"]
    assert ws_node["python_module"] == "custom_nodes.websocket_image_save" and ws_node["output_node"] is True
    assert ws_node["input"]["required"] == {"images": ["IMAGE"]} and ws_node["output"] == []


def test_pack_missing_a_comfyui_name_is_logged_in_one_line_and_skipped(compat_server):
    lines = [line for line in compat_server.lines if "missing_name_pack" in line]
    assert len(lines) == 1, compat_server.lines
    assert "custom node pack missing_name_pack skipped" in lines[0]
    assert "load_checkpoint_guess_config" in lines[0] and "docs/custom_nodes.md" in lines[0]
    with compat_server.client() as http:
        assert "NeverLoaded" not in http.get("/api/object_info").json()


def test_web_extension_is_listed_and_served(compat_server):
    with compat_server.client() as http:
        listed = http.get("/extensions").json()
        assert "/extensions/compat_pack/compat.js" in listed
        assert http.get("/api/extensions").json() == listed
        script = http.get("/extensions/compat_pack/compat.js")
        assert script.status_code == 200 and "registerExtension" in script.text
        assert http.get("/extensions/compat_pack/nothing.js").status_code == 404
        assert http.get("/extensions/compat_pack/%2e%2e/__init__.py").status_code in (403, 404)


def test_pack_routes_answer_at_their_path_and_under_api(compat_server):
    with compat_server.client() as http:
        for prefix in ("", "/api"):
            answer = http.get(f"{prefix}/compat_pack/echo/abc", params={"x": "1"})
            assert answer.status_code == 200
            assert answer.json() == {"name": "abc", "x": "1", "models": ["hello.txt"]}
        stored = http.post("/compat_pack/store", json={"value": 7})
        assert stored.status_code == 201 and stored.json() == {"stored": 7}
        refused = http.post("/compat_pack/store", json={})
        assert refused.status_code == 400 and "value is missing" in refused.text
        assert http.get("/compat_pack/store").status_code != 201             # only POST was declared


def test_pack_nodes_run_with_progress_send_sync_and_websocket_png(compat_server):
    from websocket import create_connection

    client_id = uuid.uuid4().hex
    ws = create_connection(f"{compat_server.ws_url}?clientId={client_id}", timeout=60)
    try:
        ws.recv()                                                            # status
        prompt = {
            "1": {"class_type": "CompatReadModel", "inputs": {"model_name": "hello.txt", "sampler": "euler",
                                                              "scheduler": "karras"}},
            "2": {"class_type": "CompatSolidImage", "inputs": {"width": 48, "height": 40, "value": 1.0,
                                                               "channel": "blue", "label": "v3"}},
            "3": {"class_type": "CompatResize", "inputs": {"image": ["2", 0], "width": 72, "height": 56}},
            "4": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["3", 0]}},
            "5": {"class_type": "CompatDevice", "inputs": {}},
        }
        with compat_server.client() as http:
            answer = http.post("/api/prompt", json={"prompt": prompt, "client_id": client_id})
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            events, frames = _events(ws, prompt_id)
            entry = wait_for_history(http, prompt_id)
    finally:
        ws.close()
    assert entry["status"]["status_str"] == "success", entry["status"]
    hello = [e["data"] for e in events if e["type"] == "compat.hello"]
    assert hello == [{"node": "1", "text": "hello from a pack model folder", "sampler": "euler"}]
    steps = [(e["data"]["value"], e["data"]["max"]) for e in events if e["type"] == "progress"
             and e["data"]["node"] == "1"]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert entry["outputs"]["5"] == {"text": ["cpu"]}
    assert entry["outputs"]["1"] == {"text": ["hello from a pack model folder|euler|karras"]}
    assert [e for e in events if e["type"] == "executed" and e["data"]["node"] == "2"][0]["data"]["output"] == \
        {"text": ["v3 48x40 from node 2"]}
    assert len(frames) == 1                                                  # one image in the batch
    event_type, image_type = struct.unpack(">II", frames[0][:8])
    assert (event_type, image_type) == (1, 2)                                # preview frame, PNG
    image = Image.open(io.BytesIO(frames[0][8:]))
    assert image.format == "PNG" and image.size == (72, 56)                  # the image's own size
    assert image.getpixel((10, 10)) == (0, 0, 255)


def test_interrupt_reaches_a_pack_node_through_model_management(compat_server):
    from websocket import create_connection

    client_id = uuid.uuid4().hex
    ws = create_connection(f"{compat_server.ws_url}?clientId={client_id}", timeout=60)
    try:
        ws.recv()
        with compat_server.client() as http:
            prompt = {"1": {"class_type": "CompatWaitForInterrupt", "inputs": {"seconds": 30.0}}}
            prompt_id = http.post("/api/prompt", json={"prompt": prompt, "client_id": client_id}).json()["prompt_id"]
            while True:                                                       # until the node reports progress
                event = json.loads(ws.recv())
                if event["type"] == "progress" and event["data"].get("prompt_id") == prompt_id:
                    break
            started = time.monotonic()
            assert http.post("/api/interrupt", json={}).status_code == 200
            events, _ = _events(ws, prompt_id)
            entry = wait_for_history(http, prompt_id)
    finally:
        ws.close()
    assert events[-1]["type"] == "execution_interrupted" and events[-1]["data"]["node_id"] == "1"
    assert time.monotonic() - started < 10                                    # not the node's 30 s
    assert entry["status"]["completed"] is False


def test_websocket_image_goes_as_type_4_png_to_a_client_with_preview_metadata(compat_server):
    from websocket import create_connection

    client_id = uuid.uuid4().hex
    ws = create_connection(f"{compat_server.ws_url}?clientId={client_id}", timeout=60)
    try:
        ws.recv()                                                            # status
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert json.loads(ws.recv())["type"] == "feature_flags"
        prompt = {"1": {"class_type": "CompatSolidImage", "inputs": {"width": 40, "height": 24, "value": 1.0,
                                                                     "channel": "red"}},
                  "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}}
        with compat_server.client() as http:
            prompt_id = http.post("/api/prompt", json={"prompt": prompt, "client_id": client_id}).json()["prompt_id"]
            _, frames = _events(ws, prompt_id)
    finally:
        ws.close()
    assert len(frames) == 1
    event_type, meta_length = struct.unpack(">II", frames[0][:8])
    metadata = json.loads(frames[0][8:8 + meta_length])
    assert event_type == 4 and metadata["image_type"] == "image/png" and metadata["node_id"] == "2"
    assert metadata["prompt_id"] == prompt_id
    image = Image.open(io.BytesIO(frames[0][8 + meta_length:]))
    assert image.format == "PNG" and image.size == (40, 24) and image.getpixel((0, 0)) == (255, 0, 0)

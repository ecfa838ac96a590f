"""No output is overwritten: 12 prompts with one filename prefix, queued at once on a server with
two workers (two prompts save at the same moment), give 12 distinct files, each holding the image
and the metadata of the prompt whose history names it. (The race itself is forced, with a barrier,
in tests/unit/nodes/test_save_exclusive.py; here the whole path runs on a real server.)"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from serverproc import wait_for_history
from test_server_e2e import txt2img

COUNT = 12


def _prompt(seed: int) -> dict:
    """txt2img, its image scaled to 768² so that saving it takes a while (a wide window for a race)."""
    prompt = txt2img(seed=seed)
    prompt["10"] = {"class_type": "ImageScale", "inputs": {"image": ["8", 0], "upscale_method": "nearest-exact",
                                                           "width": 768, "height": 768, "crop": "disabled"}}
    prompt["9"]["inputs"]["images"] = ["10", 0]
    return prompt


def _wait_running(http, prompt_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(item[1] == prompt_id for item in http.get("/api/queue").json()["queue_running"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} never started")


def test_concurrent_prompts_with_one_prefix_write_distinct_files_each_with_its_own_image(tmp_path, start_server):
    base = tmp_path / "base"
    with start_server(base, "--cpu", "--workers", "2") as server:
        server.wait_ready()
        with server.client() as http:
            # A lone Sleep holds both workers while the 12 prompts arrive, so they then run two by two
            # in lockstep and their SaveImage nodes pick a file name at the same moment.
            blocker = http.post("/api/prompt", json={"prompt": {
                "1": {"class_type": "Sleep", "inputs": {"seconds": 60}}}}).json()["prompt_id"]
            _wait_running(http, blocker)
            with ThreadPoolExecutor(COUNT) as pool:
                posted = list(pool.map(lambda seed: http.post("/api/prompt", json={"prompt": _prompt(seed)}),
                                       range(100, 100 + COUNT)))
            ids = {100 + i: r.json()["prompt_id"] for i, r in enumerate(posted)}
            http.post("/api/interrupt", json={"prompt_id": blocker})
            entries = {seed: wait_for_history(http, pid, timeout=300) for seed, pid in ids.items()}
    files = {}
    for seed, entry in entries.items():
        assert entry["status"]["completed"], entry["status"]
        (image,) = entry["outputs"]["9"]["images"]
        files[seed] = base / "output" / image["subfolder"] / image["filename"]
    assert len(set(files.values())) == COUNT                       # 12 names in history
    written = sorted(p.name for p in (base / "output").glob("ComfyUI_*.png"))
    assert len(written) == COUNT, written                          # 12 files on disk
    pixels = set()
    for seed, path in files.items():
        with Image.open(path) as png:
            saved_prompt = json.loads(png.text["prompt"])
            pixels.add(png.convert("RGB").tobytes())
        assert saved_prompt["3"]["inputs"]["seed"] == seed, f"{path.name} holds another prompt's image"
    assert len(pixels) == COUNT                                    # 12 different images

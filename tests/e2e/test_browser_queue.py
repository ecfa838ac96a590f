"""The current frontend's queue panel (fed only by the jobs API) in headless Chromium: a running job
shows as running and, once it ends, as a history entry with its image; cancelling a pending job
from the panel removes it from the queue and the job ends cancelled (the panel shows it as an ended
job: the frontend draws cancelled and failed jobs alike)."""

from __future__ import annotations

import os

import pytest
import testnodes
from browser import CHROMIUM, load, open_page, tiny_models_tree
from playwright import sync_api as playwright_api
from serverproc import ServerProcess, wait_for_history

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason=f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")]


def sd1_image_prompt(sleep: float) -> dict:
    """Tiny SD1 txt2img plus a `Sleep` output node, so the job stays running for `sleep` seconds."""
    return {
        "1": {"class_type": "Sleep", "inputs": {"seconds": sleep}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "queued", "images": ["8", 0]}},
    }


@pytest.fixture(scope="module")
def queue_server(tiny_model_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("queue-ui")
    models = tiny_models_tree(tiny_model_files, root)
    testnodes.install(root / "base")
    with ServerProcess(root / "base", "--models-dir", str(models), "--cpu") as server:
        server.wait_ready()
        yield server


def _open_queue_panel(page, job_id: str, active: int) -> None:
    """Opens the panel with the "N active" button once the frontend counts `active` jobs, and waits
    for the row of `job_id` (a click while the button re-renders may be lost: it is tried again)."""
    button = page.get_by_text(f"{active} active", exact=True).first
    button.wait_for(timeout=60000)
    for _ in range(3):
        button.click()
        try:
            _job(page, job_id).wait_for(timeout=10000)
            return
        except playwright_api.TimeoutError:
            continue
    _job(page, job_id).wait_for(timeout=10000)


def _job(page, job_id: str):
    return page.locator(f'[data-job-id="{job_id}"]')


def test_queue_panel_shows_the_running_job_then_its_history_entry_with_the_image(queue_server):
    with queue_server.client() as http, open_page(queue_server) as page:
        load(page, queue_server.url)
        job_id = http.post("/api/prompt", json={"prompt": sd1_image_prompt(8.0)}).json()["prompt_id"]
        _open_queue_panel(page, job_id, active=1)
        _job(page, job_id).get_by_text("Running").wait_for(timeout=60000)
        entry = wait_for_history(http, job_id, timeout=300)
        image = entry["outputs"]["9"]["images"][0]["filename"]
        thumbnail = _job(page, job_id).locator(f'img[src*="{image}"]')
        thumbnail.wait_for(timeout=60000)                # the finished job, with its image
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle(),
                               timeout=30000)                  # the image itself loaded from /view
        assert _job(page, job_id).get_by_text("Running").count() == 0
        assert page.errors == []


def test_cancelling_a_pending_job_from_the_panel_removes_it_and_it_ends_cancelled(queue_server):
    with queue_server.client() as http, open_page(queue_server) as page:
        load(page, queue_server.url)
        blocker = http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Sleep",
                                                                  "inputs": {"seconds": 60}}}}).json()["prompt_id"]
        pending = http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Sleep",
                                                                  "inputs": {"seconds": 0}}}}).json()["prompt_id"]
        _open_queue_panel(page, pending, active=2)
        item = _job(page, pending)
        item.get_by_text("In queue").wait_for(timeout=60000)
        item.hover()
        item.get_by_role("button", name="Cancel").click()
        # the row leaves the queue and comes back as an ended job: the frontend draws cancelled
        # jobs (status "cancelled" from the jobs API) with its failed-row style, titled "Failed"
        item.locator('[title="Failed"]').first.wait_for(timeout=30000)
        assert item.locator("[title^='In queue']").count() == 0
        assert pending not in [q[1] for q in http.get("/api/queue").json()["queue_pending"]]
        job = http.get(f"/api/jobs/{pending}").json()
        assert job["status"] == "cancelled"
        assert http.post(f"/api/jobs/{blocker}/cancel").json() == {"cancelled": True}
        wait_for_history(http, blocker)
        assert page.errors == []

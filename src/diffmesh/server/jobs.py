"""Jobs as ComfyUI's jobs API describes them (`/api/jobs`, ComfyUI's `comfy_execution/jobs.py`).

A job is a queued, running or finished prompt seen as one record: `id`, `status` (pending,
in_progress, completed, failed, cancelled), `priority` (the queue number), `create_time` (ms, set
when the prompt was queued), execution start and end times and error from the history messages,
output counts and the output the UI previews. These functions only read queue items and history
entries; the store keeps the list form of every history entry beside it so listing 100,000
entries never parses them again.
"""

from __future__ import annotations

import uuid
from typing import Any

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "pending", "in_progress", "completed", "failed", "cancelled"
ALL_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
HISTORY_STATUSES = (COMPLETED, FAILED, CANCELLED)
QUEUE_STATES = {PENDING: "pending", IN_PROGRESS: "running"}    # job status -> store queue state
SORT_FIELDS = ("created_at", "execution_duration")

PREVIEWABLE_MEDIA = frozenset({"images", "video", "audio", "3d", "text"})
MODEL_3D_SUFFIXES = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
TEXT_SUFFIXES = (".txt", ".md", ".json")
TEXT_PREVIEW_LIMIT = 1024
END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


def is_canonical_id(value: Any) -> bool:
    """A client-chosen prompt id must be a UUID written as `str(uuid.UUID(...))` writes it: ids are
    compared verbatim (history keys, websocket events, /interrupt), so another spelling of the
    same UUID would silently miss every lookup."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _workflow_id(extra_data: dict) -> str | None:
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    return str(wid) if wid is not None else None


def _pruned(job: dict) -> dict:
    return {k: v for k, v in job.items() if v is not None}


def queue_job(wire: list, status: str, detail: bool = False) -> dict:
    """The job of a queued or running prompt (`wire` = the 5-element queue tuple)."""
    number, prompt_id, prompt, extra_data, _outputs = wire
    job = _pruned({"id": prompt_id, "status": status, "priority": number,
                   "create_time": extra_data.get("create_time"), "outputs_count": 0,
                   "previewable_outputs_count": 0, "workflow_id": _workflow_id(extra_data)})
    if detail:
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def _times_and_error(messages: list) -> tuple[Any, Any, Any, bool]:
    start = end = error = None
    interrupted = False
    for message in messages or []:
        if not (isinstance(message, (list, tuple)) and len(message) >= 2 and isinstance(message[1], dict)):
            continue
        event, data = message[0], message[1]
        if event == "execution_start":
            start = data.get("timestamp")
        elif event in END_EVENTS:
            end = data.get("timestamp")
            error = data if event == "execution_error" else error
            interrupted = interrupted or event == "execution_interrupted"
    return start, end, error, interrupted


def history_status(entry: dict) -> str:
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return COMPLETED
    return CANCELLED if _times_and_error(status.get("messages"))[3] else FAILED


def history_job(prompt_id: str, entry: dict, detail: bool = False) -> dict:
    """The job of a history entry; `detail` adds outputs, execution status and the workflow."""
    number, _, prompt, extra_data, _ = entry["prompt"]
    status_info = entry.get("status") or {}
    start, end, error, _ = _times_and_error(status_info.get("messages"))
    outputs = entry.get("outputs") or {}
    count, preview = outputs_summary(outputs)
    job = _pruned({"id": prompt_id, "status": history_status(entry), "priority": number,
                   "create_time": extra_data.get("create_time"), "execution_start_time": start,
                   "execution_end_time": end, "execution_error": error, "outputs_count": count,
                   "previewable_outputs_count": previewable_count(outputs), "preview_output": preview,
                   "workflow_id": _workflow_id(extra_data)})
    if detail:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def duration(job: dict) -> int:
    start, end = job.get("execution_start_time"), job.get("execution_end_time")
    return end - start if start and end else 0


# -- outputs: what counts and what the UI previews -----------------------------------------------

def _as_item(item: Any) -> dict | None:
    """A dict output item; a bare file name of a 3D model becomes one; other strings are none."""
    if isinstance(item, dict):
        return item
    if isinstance(item, str) and item.lower().endswith(MODEL_3D_SUFFIXES):
        return {"filename": item, "type": "output", "subfolder": "", "mediaType": "3d"}
    return None


def _previewable(media: str, item: dict) -> bool:
    if media in PREVIEWABLE_MEDIA:
        return True
    if str(item.get("format", "")).startswith(("video/", "audio/")):
        return True
    return str(item.get("filename", "")).lower().endswith(MODEL_3D_SUFFIXES + TEXT_SUFFIXES)


def _is_text(media: str, item: dict) -> bool:
    return media == "text" or str(item.get("filename", "")).lower().endswith(TEXT_SUFFIXES)


def _media_lists(outputs: dict):
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media, items in node_outputs.items():
            if media != "animated" and isinstance(items, list):   # `animated` is a flag list
                yield node_id, media, items


def outputs_summary(outputs: dict) -> tuple[int, dict | None]:
    """(number of output items, the one to preview). The preview prefers saved visual media
    (type `output`), then any visual media, then a saved text file, then raw text, so a text node
    that ran first never hides the image."""
    count = 0
    saved = visual = text_file = raw_text = None
    for node_id, media, items in _media_lists(outputs):
        for raw in items:
            item = _as_item(raw)
            if item is None:
                if media == "text" and raw_text is None and raw is not None:
                    value = raw[0] if isinstance(raw, tuple) and raw else str(raw)
                    raw_text = {"content": value[:TEXT_PREVIEW_LIMIT], "nodeId": node_id, "mediaType": media}
                    if len(value) > TEXT_PREVIEW_LIMIT:
                        raw_text["truncated"] = True
                continue
            count += 1
            if saved is not None or not _previewable(media, item):
                continue
            enriched = {**item, "nodeId": node_id}
            enriched.setdefault("mediaType", media)
            if _is_text(media, item):
                text_file = text_file or enriched
            elif item.get("type") == "output":
                saved = enriched
            else:
                visual = visual or enriched
    return count, saved or visual or text_file or raw_text


def previewable_count(outputs: dict) -> int:
    """Items the UI's asset view would render (a SaveLatent file next to an image is not one)."""
    return sum(1 for _, media, items in _media_lists(outputs) for raw in items
               if (item := _as_item(raw)) is not None and _previewable(media, item))

"""Queue and execution routes: /prompt, /queue, /interrupt, /free, /history (spec §1.2, §2)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from diffmesh.server import bodies
from diffmesh.server.jobs import is_canonical_id
from diffmesh.server.routes.common import fail, query_int, read_json, state
from diffmesh.server.store import DuplicatePromptId

SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/prompt", get_prompt, methods=["GET"])
    r.add_api_route("/prompt", post_prompt, methods=["POST"])
    r.add_api_route("/queue", get_queue, methods=["GET"])
    r.add_api_route("/queue", post_queue, methods=["POST"])
    r.add_api_route("/interrupt", post_interrupt, methods=["POST"])
    r.add_api_route("/free", post_free, methods=["POST"])
    r.add_api_route("/history", get_history, methods=["GET"])
    r.add_api_route("/history", post_history, methods=["POST"])
    r.add_api_route("/history/{prompt_id}", get_history_entry, methods=["GET"])
    return r


def _prompt_error(kind: str, message: str, details: str, node_errors: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "details": details, "extra_info": {}},
                         "node_errors": node_errors or {}}, status_code=400)


async def get_prompt(request: Request):
    return {"exec_info": {"queue_remaining": state(request).store.remaining()}}


async def post_prompt(request: Request):
    s = state(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        return _prompt_error("invalid_prompt", "Request body must be a JSON object", type(body).__name__)
    if "prompt" not in body:
        return _prompt_error("no_prompt", "No prompt provided", "No prompt provided")
    prompt = body["prompt"]
    prompt_id = body.get("prompt_id")
    if prompt_id is None:                      # absent or null: the server picks the id
        prompt_id = str(uuid.uuid4())
    elif not is_canonical_id(prompt_id):       # ids are compared verbatim everywhere (spec: jobs API)
        return _prompt_error("invalid_prompt_id", "prompt_id must be a valid UUID",
                             "prompt_id must be a UUID string in canonical lowercase hyphenated form; "
                             "omit it to let the server generate one")
    fault = _body_fault(body)
    if fault is not None:
        return _prompt_error("invalid_prompt", *fault)
    extra_data = body.get("extra_data") or {}
    targets = body.get("partial_execution_targets")
    runtime = await asyncio.to_thread(s.runtime.get)
    valid, error, outputs, node_errors = await asyncio.to_thread(_validate, runtime.executor, prompt, targets)
    if not valid:
        return JSONResponse({"error": error, "node_errors": node_errors or {}}, status_code=400)
    extra_data = dict(extra_data)
    sensitive = {k: extra_data.pop(k) for k in SENSITIVE_KEYS if k in extra_data}
    if body.get("client_id"):
        extra_data["client_id"] = str(body["client_id"])
    extra_data["create_time"] = int(time.time() * 1000)
    number = None if body.get("number") is None else float(body["number"])
    try:
        num = s.store.enqueue(prompt_id, prompt, extra_data, list(outputs), sensitive,
                              number=number, front=bool(body.get("front")))
    except DuplicatePromptId:
        return _prompt_error("duplicate_prompt_id", "A prompt with this prompt_id was already queued",
                             f"prompt_id {prompt_id!r}; omit prompt_id to get a fresh one")
    s.dispatcher.wake()
    s.dispatcher.broadcast_status()
    return {"prompt_id": prompt_id, "number": num, "node_errors": node_errors or {}}


def _body_fault(body: dict) -> tuple[str, str] | None:
    """(message, where) for a /prompt body whose parts have the wrong JSON types, else None."""
    shape = bodies.prompt_shape_error(body["prompt"])
    if shape is not None:
        return shape
    if body.get("extra_data") is not None and not isinstance(body["extra_data"], dict):
        return "extra_data must be a JSON object", f"extra_data: got {type(body['extra_data']).__name__}"
    for key in ("client_id", "prompt_id"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            return f"{key} must be a string", f"{key}: got {type(value).__name__}"
    targets = body.get("partial_execution_targets")
    if targets is not None and not (isinstance(targets, list) and all(
            isinstance(t, (str, int)) and not isinstance(t, bool) for t in targets)):
        return "partial_execution_targets must be a list of node ids", "partial_execution_targets"
    number = body.get("number")
    if number is not None and not _finite_number(number):
        return "number must be a finite number", f"number: got {str(number)[:40]!r}"
    if body.get("front") is not None and not isinstance(body["front"], bool):
        return "front must be a boolean", f"front: got {type(body['front']).__name__}"
    return None


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:                           # an integer beyond the float range
        return False


def _validate(executor, prompt: dict, targets) -> tuple[bool, dict | None, list, dict]:
    """Calls the executor's validation and reads its answer, as a ComfyUI-style 4-tuple
    (valid, error, outputs to execute, node_errors) or an object with those attributes."""
    result = executor.validate(prompt, targets) if targets is not None else executor.validate(prompt)
    if isinstance(result, tuple):
        valid, error, outputs, node_errors = result
    else:
        valid = _attr(result, "ok", "valid", "is_valid")
        error = _attr(result, "error")
        outputs = _attr(result, "outputs", "good_outputs", "outputs_to_execute") or []
        node_errors = _attr(result, "node_errors") or {}
        new_prompt = _attr(result, "prompt")
        if isinstance(new_prompt, dict) and new_prompt is not prompt:
            prompt.clear()
            prompt.update(new_prompt)
    if hasattr(error, "to_dict"):
        error = error.to_dict()
    node_errors = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in (node_errors or {}).items()}
    if not valid and not error:
        error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                 "details": "", "extra_info": {}}
    return bool(valid), error, [str(o) for o in outputs], node_errors


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        if hasattr(obj, name):
            value = getattr(obj, name)
            return value() if callable(value) and name in ("ok", "valid", "is_valid") else value
    return None


async def get_queue(request: Request):
    store = state(request).store
    running, pending = await asyncio.to_thread(lambda: (store.items("running"), store.items("pending")))
    return {"queue_running": [i.as_wire() for i in running], "queue_pending": [i.as_wire() for i in pending]}


async def _clear_or_delete(request: Request, clear, delete) -> None:
    body = await read_json(request, allow_empty=True, default={})
    if not isinstance(body, dict):
        raise fail(400, "bad_request", "body must be a JSON object", 'e.g. {"clear": true} or {"delete": [ids]}')
    if body.get("clear"):
        await asyncio.to_thread(clear)
    ids = body.get("delete")
    if ids is not None:
        if not isinstance(ids, list):
            raise fail(400, "bad_request", "'delete' must be a list of prompt ids", f"got {type(ids).__name__}")
        await asyncio.to_thread(delete, [str(i) for i in ids])


async def post_queue(request: Request):
    s = state(request)
    await _clear_or_delete(request, lambda: s.store.delete_pending(None), s.store.delete_pending)
    s.dispatcher.broadcast_status()
    return Response(status_code=200)


async def post_interrupt(request: Request):
    body = await request.body()
    prompt_id = None
    try:
        data = bodies.loads(body) if body.strip() else {}
        if isinstance(data, dict) and isinstance(data.get("prompt_id"), (str, int)) and data["prompt_id"] != "":
            prompt_id = str(data["prompt_id"])
    except bodies.BodyError:
        pass  # ComfyUI accepts an invalid body here and interrupts whatever runs
    state(request).dispatcher.interrupt(prompt_id)
    return Response(status_code=200)


async def post_free(request: Request):
    body = await read_json(request, allow_empty=True, default={})
    if not isinstance(body, dict):
        raise fail(400, "bad_request", "body must be a JSON object", '{"unload_models": bool, "free_memory": bool}')
    state(request).dispatcher.request_free(bool(body.get("unload_models")), bool(body.get("free_memory")))
    return Response(status_code=200)


async def get_history(request: Request):
    store = state(request).store
    max_items = query_int(request, "max_items")
    offset = query_int(request, "offset", -1)
    text = await asyncio.to_thread(store.history_json, max_items, offset)
    return Response(content=text, media_type="application/json")


async def get_history_entry(request: Request, prompt_id: str):
    entry = await asyncio.to_thread(state(request).store.history_entry, prompt_id)
    return {prompt_id: entry} if entry is not None else {}


async def post_history(request: Request):
    store = state(request).store
    await _clear_or_delete(request, lambda: store.delete_history(None), store.delete_history)
    return Response(status_code=200)

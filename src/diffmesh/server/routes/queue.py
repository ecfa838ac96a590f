"""Queue and execution routes: /prompt, /queue, /interrupt, /free, /history (spec §1.2, §2)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

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
    if not isinstance(prompt, dict):
        return _prompt_error("invalid_prompt", "The prompt must be a JSON object of node id → node",
                             f"got {type(prompt).__name__}")
    extra_data = body.get("extra_data") or {}
    if not isinstance(extra_data, dict):
        return _prompt_error("invalid_prompt", "extra_data must be a JSON object", f"got {type(extra_data).__name__}")
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
    number = _number(body.get("number"))
    try:
        num = s.store.enqueue(prompt_id, prompt, extra_data, list(outputs), sensitive,
                              number=number, front=bool(body.get("front")))
    except DuplicatePromptId:
        return _prompt_error("duplicate_prompt_id", "A prompt with this prompt_id was already queued",
                             f"prompt_id {prompt_id!r}; omit prompt_id to get a fresh one")
    s.dispatcher.wake()
    s.dispatcher.broadcast_status()
    return {"prompt_id": prompt_id, "number": num, "node_errors": node_errors or {}}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise fail(400, "invalid_prompt", "number must be a number", f"got {value!r}") from None


def _validate(executor, prompt: dict, targets) -> tuple[bool, dict | None, list, dict]:
    """Calls the executor's validation and reads its answer, as a ComfyUI-style 4-tuple
    (valid, error, outputs to execute, node_errors) or an object with those attributes."""
    result = executor.validate(prompt, targets) if targets else executor.validate(prompt)
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
        data = json.loads(body) if body.strip() else {}
        if isinstance(data, dict) and data.get("prompt_id"):
            prompt_id = str(data["prompt_id"])
    except ValueError:
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
    return await asyncio.to_thread(store.history, max_items, offset)


async def get_history_entry(request: Request, prompt_id: str):
    entry = await asyncio.to_thread(state(request).store.history_entry, prompt_id)
    return {prompt_id: entry} if entry is not None else {}


async def post_history(request: Request):
    store = state(request).store
    await _clear_or_delete(request, lambda: store.delete_history(None), store.delete_history)
    return Response(status_code=200)

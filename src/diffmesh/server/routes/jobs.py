"""The jobs API of current ComfyUI (`/api/jobs`), which the frontend reads its queue and history
panels from: list with status filters, sorting and paging; one job with its details; cancel one or
several jobs. Errors and bodies are ComfyUI's (`{"error": "..."}`, `{"cancelled": bool}`).

Listing is served by the SQLite store (`QueueStore.jobs`); cancelling a pending job moves it to
history as cancelled, cancelling a running one goes through the dispatcher's interrupt.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from diffmesh.server import jobs as jobmod
from diffmesh.server.routes.common import state

log = logging.getLogger("diffmesh.server")


def router() -> APIRouter:
    """Mounted at `/api` only: ComfyUI defines these routes with the prefix."""
    r = APIRouter()
    r.add_api_route("/jobs", list_jobs, methods=["GET"])
    r.add_api_route("/jobs/cancel", cancel_jobs, methods=["POST"])
    r.add_api_route("/jobs/{job_id}", get_job, methods=["GET"])
    r.add_api_route("/jobs/{job_id}/cancel", cancel_one, methods=["POST"])
    return r


def _error(message: str, status: int = 400, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _int(query, name: str, default):
    """(value, None) or (None, error response) for an integer query parameter."""
    if name not in query:
        return default, None
    try:
        number = int(query[name])
    except ValueError:
        return None, _error(f"{name} must be an integer")
    if abs(number) >= 2**63:                       # SQLite integers are 64-bit
        return None, _error(f"{name} is out of range")
    return number, None


async def list_jobs(request: Request):
    query = request.query_params
    statuses = jobmod.ALL_STATUSES
    if query.get("status"):
        statuses = tuple(s.strip().lower() for s in query["status"].split(",") if s.strip())
        invalid = [s for s in statuses if s not in jobmod.ALL_STATUSES]
        if invalid:
            return _error(f"Invalid status value(s): {', '.join(invalid)}. "
                          f"Valid values: {', '.join(jobmod.ALL_STATUSES)}")
    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in jobmod.SORT_FIELDS:
        return _error("sort_by must be 'created_at' or 'execution_duration'")
    sort_order = query.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        return _error("sort_order must be 'asc' or 'desc'")
    limit, bad = _int(query, "limit", None)
    if bad:
        return bad
    if limit is not None and limit <= 0:
        return _error("limit must be a positive integer")
    offset, bad = _int(query, "offset", 0)
    if bad:
        return bad
    offset = max(0, offset)
    store = state(request).store
    page, total = await asyncio.to_thread(store.jobs, statuses, query.get("workflow_id"), sort_by,
                                          sort_order == "desc", limit, offset)
    # JSONResponse: the page is plain JSON data already (FastAPI's generic encoder costs ~7x the dump)
    return JSONResponse({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total,
                                                      "has_more": offset + len(page) < total}})


async def get_job(request: Request, job_id: str):
    job = await asyncio.to_thread(state(request).store.job, job_id)
    return JSONResponse(job) if job is not None else _error("Job not found", 404)


def cancel(s, job_id: str) -> bool:
    """Cancels a pending job (to history as cancelled) or interrupts a running one. True when a
    job was pending or running; a finished or unknown id is a no-op (cancel is idempotent)."""
    where = s.store.state_of(job_id)
    if where == "pending":
        if s.store.cancel_pending(job_id):
            log.info("cancelled pending prompt %s", job_id)
            s.dispatcher.broadcast_status()
            return True
        where = "running"                      # it started between the look and the cancel
    if where == "running":
        hit = s.dispatcher.interrupt(job_id)   # only if it is still running
        if hit:
            log.info("cancelling running prompt %s", job_id)
        return hit
    return False


async def cancel_one(request: Request, job_id: str):
    return {"cancelled": await asyncio.to_thread(cancel, state(request), job_id)}


async def cancel_jobs(request: Request):
    try:
        body = await request.json()
    except ValueError:
        return _error("Request body must be valid JSON")
    ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list):
        return _error("job_ids must be a list")
    invalid = [i if isinstance(i, str) else repr(i) for i in ids if not jobmod.is_canonical_id(i)]
    if invalid:
        return _error("job_ids contains invalid id(s)", invalid_ids=invalid)
    s = state(request)
    results = [await asyncio.to_thread(cancel, s, job_id) for job_id in ids]
    return {"cancelled": any(results)}

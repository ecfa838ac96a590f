"""Calling one node the way ComfyUI does: inputs as lists, one call per list element (or one call
with the lists for INPUT_IS_LIST), results merged per output (OUTPUT_IS_LIST extends), coroutines
of async nodes gathered concurrently, and a node's return value split into outputs, UI and node
expansions (`{"result": ..., "expand": graph}`) (spec §5.3).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from diffmesh.graph.graph_utils import ExecutionBlocker, is_link

class ExpansionScope:
    """The node call running now, for the ids of the nodes its expansion adds: ComfyUI's default
    GraphBuilder prefix "<node id>.<call index>.<graph index>.", the graph index counting the
    builders made during the call."""

    def __init__(self, node_id: str, call_index: int):
        self.node_id = node_id
        self.call_index = call_index
        self.graphs = 0

    def next_prefix(self) -> str:
        prefix = f"{self.node_id}.{self.call_index}.{self.graphs}."
        self.graphs += 1
        return prefix


EXPANSION_SCOPE: contextvars.ContextVar[ExpansionScope | None] = contextvars.ContextVar(
    "diffmesh_expansion_scope", default=None)


def map_calls(args: dict[str, list], input_is_list: bool) -> list[dict[str, Any]]:
    """The keyword sets of each call: the whole lists once, else element i of every input (the
    last element repeats for shorter lists); no call when an input has no value at all."""
    if input_is_list:
        return [args]
    if any(len(v) == 0 for v in args.values()):
        return []
    count = max((len(v) for v in args.values()), default=1)
    return [{k: v[i] if len(v) > i else v[-1] for k, v in args.items()} for i in range(count)]


def _blocker(call: dict, input_is_list: bool) -> ExecutionBlocker | None:
    for value in call.values():
        for item in (value if input_is_list and isinstance(value, list) else [value]):
            if isinstance(item, ExecutionBlocker):
                return item
    return None


def call_each(function, first: Any, calls: list[dict], node_id: str, input_is_list: bool = False,
              on_block=None) -> list[Any]:
    """function(first, **call) for each call, with the expansion scope of that call set; a call
    with an ExecutionBlocker among its inputs is not made, its result is the blocker (`on_block`
    may replace it)."""
    results = []
    for index, call in enumerate(calls):
        blocker = _blocker(call, input_is_list)
        if blocker is not None:
            results.append(on_block(blocker) if on_block is not None else blocker)
            continue
        scope = ExpansionScope(node_id, index)
        token = EXPANSION_SCOPE.set(scope)
        try:
            result = function(first, **call)
        finally:
            EXPANSION_SCOPE.reset(token)
        results.append(_in_scope(result, scope) if inspect.iscoroutine(result) else result)
    return results


async def _in_scope(coroutine, scope: ExpansionScope):
    """An async node's body runs later, as a task: it keeps its call's expansion scope."""
    token = EXPANSION_SCOPE.set(scope)
    try:
        return await coroutine
    finally:
        EXPANSION_SCOPE.reset(token)


async def resolve_all(results: list[Any]) -> list[Any]:
    """Await the coroutines among `results` concurrently; plain values stay as they are."""
    waiting = [r for r in results if inspect.isawaitable(r)]
    if not waiting:
        return results
    done = iter(await asyncio.gather(*waiting))
    return [next(done) if inspect.isawaitable(r) else r for r in results]


def resolve_now(value: Any) -> Any:
    """The value of a possibly async hook (VALIDATE_INPUTS, IS_CHANGED) from synchronous code."""
    if not inspect.isawaitable(value):
        return value

    async def wait():
        return await value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with ThreadPoolExecutor(1) as pool:          # a loop runs in this thread: use a fresh one aside
        return pool.submit(asyncio.run, wait()).result()


def _as_tuple(result: Any, node_id: str, schema) -> tuple:
    if isinstance(result, ExecutionBlocker):
        return (result,) * len(schema.outputs)
    if result is None:
        return ()
    if not isinstance(result, (tuple, list)):
        raise TypeError(f"node {node_id} ({schema.name}) returned {type(result).__name__}; "
                        "its function must return a tuple of outputs or a dict with 'result'/'ui'")
    if schema.outputs and len(result) != len(schema.outputs):
        raise TypeError(f"node {node_id} ({schema.name}) returned {len(result)} outputs but declares "
                        f"{len(schema.outputs)} ({', '.join(map(str, schema.output_types))})")
    return tuple(result)


def split_returns(results: list[Any], node_id: str, schema):
    """(per-call (expansion graph or None, outputs tuple), merged ui or None, has_expansion)."""
    parts: list[tuple[dict | None, tuple]] = []
    uis: list[dict] = []
    expands = False
    for result in results:
        if isinstance(result, dict):
            if result.get("ui") is not None:
                uis.append(result["ui"])
            if result.get("expand") is not None:
                expands = True
                inner = result.get("result")
                inner = (inner,) * len(schema.outputs) if isinstance(inner, ExecutionBlocker) else inner
                parts.append((result["expand"], tuple(inner or ())))
            elif "result" in result:
                parts.append((None, _as_tuple(result["result"], node_id, schema)))
        else:
            parts.append((None, _as_tuple(result, node_id, schema)))
    ui = None
    if uis:
        ui = {key: [item for one in uis for item in one.get(key, [])] for key in uis[0]}
    return parts, ui, expands


def merge_outputs(results: list[tuple], schema) -> list[list[Any]]:
    """One list per output slot: OUTPUT_IS_LIST slots concatenate, others collect one per call."""
    merged: list[list[Any]] = []
    for slot, spec in enumerate(schema.outputs):
        values: list[Any] = []
        for result in results:
            if slot >= len(result):
                continue
            if spec.is_list and not isinstance(result[slot], ExecutionBlocker):
                values.extend(result[slot])
            else:
                values.append(result[slot])
        merged.append(values)
    return merged


def resolve_expansion(parts: list[tuple[bool, tuple]], outputs_of) -> list[tuple]:
    """The expanding node's results once its expansion ran: links replaced by what they point
    at (every element of that output list, as ComfyUI does)."""
    resolved = []
    for expanded, result in parts:
        if not expanded:
            resolved.append(result)
            continue
        values: list[Any] = []
        for item in result:
            if is_link(item):
                values.extend(outputs_of(item[0])[int(item[1])])
            else:
                values.append(item)
        resolved.append(tuple(values))
    return resolved


def format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)

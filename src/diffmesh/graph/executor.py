"""Runs one API-format prompt: validate, find cached nodes, schedule, call nodes, emit events (spec §5).

`PromptExecutor.execute(...)` returns an `ExecutionResult` and never raises for a failing node: a
node that raises becomes an `execution_error` event and an "error" result, and the executor stays
usable (caches of nodes that finished stay valid). The graph layer never touches a device; nodes
reach models through `engine`.

The execution model is ComfyUI's: lazy inputs (a node's `check_lazy_status` names the lazy inputs
it needs; their nodes run only then), node expansion (a node returns `{"result": ..., "expand":
graph}`; the graph's nodes join the prompt as ephemeral nodes, are cached by signature like any
node, and the node's outputs are the links it returned, so loops are built by expanding again),
async nodes (their coroutines run as tasks while other ready nodes go on; the prompt runs on an
asyncio loop of its own), list mapping, and the hidden inputs PROMPT, DYNPROMPT, EXTRA_PNGINFO and
UNIQUE_ID.

Several `execute` calls may run at once (the server's queue parallel), each with its own engine
(`execute(..., engine=lease.engine)`). Each prompt reads and writes the shared output cache through
its own `CacheSession` (signatures, pinned entries; the shared tables are locked), and a node's
per-instance state is held by one running prompt at a time: a second prompt with the same node
id and class meanwhile gets a fresh private state (a new instance of a V1 custom node).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from diffmesh.errors import DeviceOutOfMemory, InterruptedError_
from diffmesh.graph import events as ev
from diffmesh.graph import node_call
from diffmesh.graph.cache import CacheEntry, CacheSession, ExecutionCache, compute_signature, compute_signatures
from diffmesh.graph.dynprompt import DuplicateNodeError, DynamicPrompt
from diffmesh.graph.graph_utils import ExecutionBlocker, is_link, unwrap_constant
from diffmesh.graph.schedule import DependencyCycleError, ExecutionList
from diffmesh.graph.validate import exception_type_name, validate_prompt
from diffmesh.nodes.base import Interrupted, NodeContext, SchemaEnv


@dataclass
class ExecutionResult:
    status: str                                        # "success" | "error" | "interrupted"
    outputs: dict[str, dict] = field(default_factory=dict)      # node id -> merged UI dict
    meta: dict[str, dict] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)     # [[event, data], ...] for history
    error: dict | None = None                          # execution_error / execution_interrupted data
    validation_error: dict | None = None               # spec §2.3 `error` when the prompt is invalid
    node_errors: dict = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)  # ids that ran or were served from the cache

    @property
    def completed(self) -> bool:
        return self.status == "success"


class _Run:
    """State of one execute() call."""

    def __init__(self, prompt: dict, prompt_id: str, extra_data: dict, recorder: ev.EventRecorder,
                 interrupt: threading.Event, engine: Any):
        self.prompt = prompt
        self.dyn = DynamicPrompt(prompt)
        self.engine = engine
        self.cache: CacheSession | None = None
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.recorder = recorder
        self.interrupt = interrupt
        self.outputs: dict[str, list[list[Any]]] = {}
        self.ui: dict[str, dict] = {}
        self.executed: list[str] = []
        self.states: dict[str, dict] = {}
        self.changed: dict[str, Any] = {}
        self.keyed: set[str] = set()
        self.expansions: dict[str, list[tuple[bool, tuple]]] = {}     # node -> results awaiting its subgraph
        self.tasks: dict[str, asyncio.Future] = {}                     # async node -> its running calls
        self.inputs: dict[str, list] | None = None                     # the failing node's inputs

    def outputs_of(self, node_id: str) -> list[list[Any]] | None:
        found = self.outputs.get(node_id)
        if found is None and self.cache is not None:
            entry = self.cache.get(node_id)
            found = None if entry is None else entry.outputs
        return found

    def progress_state(self, node_id: str, value: float, max_: float, state: str) -> None:
        self.states[node_id] = {"value": value, "max": max_, "state": state, "node_id": node_id,
                                "prompt_id": self.prompt_id, "display_node_id": self.dyn.get_display_node_id(node_id),
                                "parent_node_id": self.dyn.get_parent_node_id(node_id),
                                "real_node_id": self.dyn.get_real_node_id(node_id)}
        self.recorder.emit(ev.PROGRESS_STATE, nodes=dict(self.states))


class PromptExecutor:
    def __init__(self, registry, engine, paths, cache_policy: str = "classic", cache_size: int | None = None,
                 options: dict | None = None, device_names: list[str] | None = None):
        self.registry = registry
        self.engine = engine
        self.paths = paths
        self.options = dict(options or {})
        self.cache = ExecutionCache(cache_policy, cache_size)
        self.device_names = tuple(device_names if device_names is not None else self._engine_devices(engine))

    @staticmethod
    def _engine_devices(engine) -> list[str]:
        names = getattr(engine, "device_names", None)
        return list(names()) if callable(names) else []

    @property
    def env(self) -> SchemaEnv:
        return SchemaEnv(self.paths, self.device_names)

    def object_info(self) -> dict[str, dict]:
        return self.registry.object_info(self.paths, self.device_names)

    def validate(self, prompt: dict, partial_execution_targets: list[str] | None = None):
        """(ok, error, outputs_to_execute, node_errors) — spec §2.3 shapes."""
        return validate_prompt(prompt, self.registry, self.env, partial_execution_targets)

    def reset_cache(self) -> None:
        self.cache.clear()

    # -- execution ----------------------------------------------------------------------------------
    def execute(self, prompt: dict, prompt_id: str, extra_data: dict | None = None, sink: ev.Sink | None = None,
                interrupt: threading.Event | None = None, outputs_to_execute: list[str] | None = None,
                engine: Any = None) -> ExecutionResult:
        """Run `prompt` with `engine` (default: the one given at construction; a lease's engine when
        the server runs several prompts at once). Safe to call from several threads; each call runs
        its own asyncio loop (async nodes), so it must not be called from a running loop's thread."""
        extra_data = dict(extra_data or {})
        if outputs_to_execute is None:
            ok, error, outputs_to_execute, node_errors = self.validate(prompt, extra_data.get("partial_execution_targets"))
            if not ok:
                return ExecutionResult("error", validation_error=error, node_errors=node_errors)
        run = _Run(prompt, prompt_id, extra_data, ev.EventRecorder(sink, prompt_id), interrupt or threading.Event(),
                   engine if engine is not None else self.engine)
        try:
            return asyncio.run(self._execute(run, list(outputs_to_execute)))
        finally:
            if run.cache is not None:
                run.cache.close()

    def _schema(self, run: _Run, node_id: str):
        return self.registry[run.dyn.get_node(node_id)["class_type"]].schema

    async def _execute(self, run: _Run, outputs: list[str]) -> ExecutionResult:
        prompt = run.prompt
        run.recorder.emit(ev.EXECUTION_START)
        run.keyed = self._keyed_by_id(prompt, prompt)
        run.changed = await self._is_changed(run, list(prompt))
        run.cache = self.cache.begin_prompt(prompt, compute_signatures(prompt, run.changed, run.keyed))
        cached = run.cache.find(list(prompt))
        run.recorder.emit(ev.EXECUTION_CACHED, nodes=cached)

        def is_lazy(nid: str, name: str) -> bool:
            spec = self._schema(run, nid).input(name)
            return spec is not None and bool(spec.options.get("lazy", False))

        execution = ExecutionList(run.dyn, lambda nid: self._schema(run, nid).output_node,
                                  lambda nid: run.outputs_of(nid) is not None, is_lazy,
                                  lambda nid: self.registry[run.dyn.get_node(nid)["class_type"]].is_async)
        for output_id in outputs:
            execution.add(output_id)
        node_id = None
        try:
            while execution:
                node_id = None
                node_id = await execution.stage(run.interrupt.is_set)
                if node_id is None:                     # interrupted while async nodes ran: stop them
                    node_id = next(iter(run.tasks), None)
                    raise Interrupted("Processing interrupted")
                if run.interrupt.is_set():
                    raise Interrupted("Processing interrupted")
                if await self._run_node(run, execution, node_id):
                    execution.complete()
                else:
                    execution.unstage()
        except (Interrupted, InterruptedError_):
            run.interrupt.clear()
            real = run.dyn.get_real_node_id(node_id) if node_id else None
            data = {"node_id": real, "node_type": prompt[real]["class_type"] if real else None,
                    "executed": list(run.executed)}
            run.recorder.emit(ev.EXECUTION_INTERRUPTED, **data)
            return self._result(run, "interrupted", data)
        except Exception as exc:  # noqa: BLE001 - any node failure becomes execution_error
            data = self._error_data(run, node_id, exc, cached)
            run.recorder.emit(ev.EXECUTION_ERROR, **data)
            return self._result(run, "error", data)
        finally:
            for task in run.tasks.values():
                task.cancel()
        run.recorder.emit(ev.EXECUTION_SUCCESS)
        return self._result(run, "success", None)

    def _result(self, run: _Run, status: str, error: dict | None) -> ExecutionResult:
        meta = {nid: {"node_id": nid, "display_node": run.dyn.get_display_node_id(nid),
                      "parent_node": run.dyn.get_parent_node_id(nid), "real_node_id": run.dyn.get_real_node_id(nid)}
                for nid in run.ui}
        return ExecutionResult(status, outputs=dict(run.ui), meta=meta, messages=run.recorder.messages,
                               error=error, executed=list(run.executed))

    def _error_data(self, run: _Run, node_id: str | None, exc: Exception, cached: list[str]) -> dict:
        if isinstance(exc, DependencyCycleError):
            blamed = self._cycle_blame(run, exc)
            return {"node_id": blamed, "node_type": run.prompt[blamed]["class_type"] if blamed else None,
                    "executed": list(run.executed), "exception_message": str(exc),
                    "exception_type": "graph.DependencyCycleError", "traceback": [], "current_inputs": [],
                    "current_outputs": cached}
        real = run.dyn.get_real_node_id(node_id) if node_id else None
        inputs = {name: [node_call.format_value(v) for v in values] for name, values in (run.inputs or {}).items()}
        class_type = run.dyn.get_node(node_id)["class_type"] if node_id else ""
        return {"node_id": real, "node_type": run.prompt[real]["class_type"] if real else None,
                "executed": list(run.executed), "exception_message": f"{exc}\n{_tips(exc, class_type)}",
                "exception_type": exception_type_name(exc), "traceback": traceback.format_tb(exc.__traceback__),
                "current_inputs": inputs, "current_outputs": cached}

    @staticmethod
    def _cycle_blame(run: _Run, exc: DependencyCycleError) -> str | None:
        """ComfyUI blames a cycle on the node that expanded into it (static cycles fail validation),
        else on the first node of the cycle."""
        nodes = exc.nodes
        for node_id in nodes:
            display = run.dyn.get_display_node_id(node_id)
            if display != node_id:
                return display
        return run.dyn.get_real_node_id(nodes[0]) if nodes else None

    # -- signatures ---------------------------------------------------------------------------------
    async def _is_changed(self, run: _Run, node_ids: list[str]) -> dict[str, Any]:
        """IS_CHANGED of the nodes that define it: constants as they are, linked inputs as None,
        hidden inputs as ComfyUI gives them here; raising = NaN (always run)."""
        changed = {}
        for node_id in node_ids:
            node = run.dyn.get_node(node_id)
            definition = self.registry[node["class_type"]]
            if definition.is_changed is None:
                continue
            schema = definition.schema
            inputs: dict[str, Any] = {}
            for name, value in node.get("inputs", {}).items():
                spec = schema.input(name)
                if is_link(value) and not (spec is not None and spec.options.get("rawLink", False)):
                    inputs[name] = None
                elif spec is not None:
                    inputs[name] = unwrap_constant(value)
            hidden = {"PROMPT": {}, "DYNPROMPT": None, "EXTRA_PNGINFO": None, "UNIQUE_ID": node_id}
            inputs.update({name: hidden.get(kind) for name, kind in schema.hidden})
            try:
                value = definition.is_changed(self.paths, **_accepted(definition.is_changed, inputs))
                value = await value if inspect.isawaitable(value) else value
                changed[node_id] = None if isinstance(value, ExecutionBlocker) else value
            except Exception:  # noqa: BLE001 - ComfyUI treats a failing IS_CHANGED as "changed"
                changed[node_id] = float("nan")
        return changed

    def _keyed_by_id(self, nodes, node_ids) -> set[str]:
        keyed = set()
        for node_id in node_ids:
            definition = self.registry[nodes[node_id]["class_type"]]
            if definition.not_idempotent or any(kind == "UNIQUE_ID" for _, kind in definition.schema.hidden):
                keyed.add(node_id)
        return keyed

    # -- one node -----------------------------------------------------------------------------------
    async def _run_node(self, run: _Run, execution: ExecutionList, node_id: str) -> bool:
        """Run (or finish) one node; False when it is pending again (lazy inputs, expansion, async)."""
        display = run.dyn.get_display_node_id(node_id)
        entry = run.cache.get(node_id)
        if entry is not None:
            run.outputs[node_id] = entry.outputs
            if entry.ui is not None:
                run.ui[node_id] = entry.ui
                run.recorder.emit(ev.EXECUTED, node=node_id, display_node=display, output=entry.ui)
            run.executed.append(node_id)
            run.progress_state(node_id, 1, 1, "finished")
            return True
        definition = self.registry[run.dyn.get_node(node_id)["class_type"]]
        schema = definition.schema
        run.inputs = None
        if node_id in run.tasks:
            parts, ui, expands = node_call.split_returns(run.tasks.pop(node_id).result(), node_id, schema)
        elif node_id in run.expansions:
            results = node_call.resolve_expansion(run.expansions.pop(node_id), run.outputs_of)
            parts, ui, expands = [(None, r) for r in results], None, False
        else:
            run.progress_state(node_id, 0, 1, "running")
            run.recorder.emit(ev.EXECUTING, node=node_id, display_node=display)
            args, missing = self._gather(run, node_id, schema)
            run.inputs = args
            ctx = self._context(run, node_id, run.dyn.get_node(node_id)["class_type"])
            calls = node_call.map_calls(args, schema.input_is_list)
            if definition.check_lazy_status is not None:
                needed = await self._lazy_needs(definition, ctx, calls, args, missing, node_id)
                if needed:
                    for name in needed:
                        execution.make_input_strong_link(node_id, name)
                    return False
            ctx.check_interrupt()
            results = node_call.call_each(definition.execute, ctx, calls, node_id, schema.input_is_list,
                                          lambda blocker: self._blocked(run, node_id, blocker))
            if any(inspect.isawaitable(r) for r in results):
                task = asyncio.ensure_future(node_call.resolve_all(results))
                run.tasks[node_id] = task
                unblock = execution.add_external_block(node_id)
                task.add_done_callback(lambda _t: unblock())
                return False
            parts, ui, expands = node_call.split_returns(results, node_id, schema)
        if ui is not None:
            run.ui[node_id] = ui
            run.recorder.emit(ev.EXECUTED, node=node_id, display_node=display, output=ui)
        if expands:
            await self._expand(run, execution, node_id, parts)
            return False
        outputs = node_call.merge_outputs([p[1] for p in parts], schema)
        run.outputs[node_id] = outputs
        run.executed.append(node_id)
        run.cache.set(node_id, CacheEntry(outputs, run.ui.get(node_id)))
        last = run.states.get(node_id, {})
        run.progress_state(node_id, last.get("max", 1), last.get("max", 1), "finished")
        return True

    @staticmethod
    def _blocked(run: _Run, node_id: str, blocker: ExecutionBlocker) -> ExecutionBlocker:
        """A call blocked by an input: report a blocker's message as ComfyUI does (an execution_error
        event that is not part of the history and does not fail the prompt), then block silently."""
        if blocker.message is None:
            return blocker
        run.recorder.sink(ev.EXECUTION_ERROR, {
            "prompt_id": run.prompt_id, "node_id": node_id, "node_type": run.dyn.get_node(node_id)["class_type"],
            "executed": list(run.executed), "exception_message": f"Execution Blocked: {blocker.message}",
            "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [], "current_outputs": []})
        return ExecutionBlocker(None)

    async def _lazy_needs(self, definition, ctx, calls, args, missing, node_id) -> list[str]:
        """The lazy inputs `check_lazy_status` asks for that have no value yet."""
        answers = await node_call.resolve_all(node_call.call_each(definition.check_lazy_status, ctx, calls, node_id))
        named = {name for answer in answers if isinstance(answer, list) for name in answer}
        return sorted(n for n in named if isinstance(n, str) and (n not in args or n in missing))

    async def _expand(self, run: _Run, execution: ExecutionList, node_id: str, parts) -> None:
        """Add the nodes of `node_id`'s expansions to the prompt; it runs again once the nodes its
        returned links point at are done."""
        pending, new_ids, new_outputs, links = [], [], [], []
        for graph, result in parts:
            if graph is None:
                pending.append((False, result))
                continue
            for new_id in graph:
                if run.dyn.has_node(new_id):
                    raise DuplicateNodeError(f"Attempt to add duplicate node {new_id}. Ensure node ids are unique "
                                             "and deterministic or use graph_utils.GraphBuilder.")
            for new_id, info in graph.items():
                if info.get("class_type") not in self.registry:
                    raise KeyError(f"node {node_id} expanded into node {new_id} of unknown class "
                                   f"{info.get('class_type')!r}: install the node pack that defines it")
                info.setdefault("inputs", {})
                run.dyn.add_ephemeral_node(new_id, info, node_id, info.get("override_display_id", node_id))
                new_ids.append(new_id)
                if self.registry[info["class_type"]].schema.output_node:
                    new_outputs.append(new_id)
            links += [item[0] for item in result if is_link(item)]
            pending.append((True, result))
        view = run.dyn.view()
        run.changed.update(await self._is_changed(run, new_ids))
        run.keyed |= self._keyed_by_id(view, new_ids)
        for new_id in new_ids:
            run.cache.add_ephemeral(new_id, compute_signature(view, new_id, run.changed, run.keyed), node_id)
        for new_id in new_outputs:
            execution.add(new_id)
        for source in links:
            execution.add_strong_link(source, node_id)
        run.expansions[node_id] = pending

    def _gather(self, run: _Run, node_id: str, schema) -> tuple[dict[str, list], set[str]]:
        """Every input as a list (spec §5.3): constants -> [v], links -> the upstream slot list, a
        link whose value does not exist (yet: a lazy input not asked for) -> [None]."""
        args: dict[str, list] = {}
        missing: set[str] = set()
        for name, value in run.dyn.get_node(node_id).get("inputs", {}).items():
            spec = schema.input(name)
            if is_link(value) and not (spec is not None and spec.options.get("rawLink", False)):
                source = run.outputs_of(value[0])
                if source is None or int(value[1]) >= len(source):
                    missing.add(name)
                    args[name] = [None]
                else:
                    args[name] = source[int(value[1])]
            elif spec is not None:
                args[name] = [unwrap_constant(value)]
        hidden = {"PROMPT": run.prompt, "DYNPROMPT": run.dyn, "EXTRA_PNGINFO": run.extra_data.get("extra_pnginfo"),
                  "UNIQUE_ID": node_id, "AUTH_TOKEN_COMFY_ORG": run.extra_data.get("auth_token_comfy_org"),
                  "API_KEY_COMFY_ORG": run.extra_data.get("api_key_comfy_org")}
        for name, kind in schema.hidden:
            args[name] = [hidden.get(kind)]
        return args, missing

    def _context(self, run: _Run, node_id: str, class_type: str) -> NodeContext:
        preview = run.extra_data.get("preview_method")
        if preview in (None, "default"):
            preview = self.options.get("preview_method", "none")
        options = {**self.options, "preview_method": preview}
        display = run.dyn.get_display_node_id(node_id)

        def on_progress(value: int, max_: int, image: Any) -> None:
            if run.interrupt.is_set():
                if run.engine is not None:
                    run.engine.interrupt()
                raise Interrupted("Processing interrupted")
            run.progress_state(node_id, value, max_, "running")
            if image is not None:
                run.recorder.emit(ev.PREVIEW, node=node_id, display_node=display, image=image)
            run.recorder.emit(ev.PROGRESS, value=value, max=max_, node=node_id)

        return NodeContext(engine=run.engine, paths=self.paths, node_id=node_id, prompt=run.prompt,
                           extra_data=run.extra_data, state=run.cache.state(node_id, class_type), options=options,
                           on_progress=on_progress, interrupt=run.interrupt)


OOM_TIP = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
           "have accidentally set the batch_size to a large number.")
CLIP_TIP = ("\n\nTIPS: If you have any \"Load CLIP\" or \"*CLIP Loader\" nodes in your workflow connected to this "
            "sampler node make sure the correct file(s) and type is selected.")


def _tips(exc: Exception, class_type: str) -> str:
    """ComfyUI's hint appended to an execution_error message ("{ex}\n{tips}")."""
    if isinstance(exc, (DeviceOutOfMemory, torch.OutOfMemoryError)):
        return OOM_TIP
    if isinstance(exc, RuntimeError) and "mat1 and mat2 shapes" in str(exc) and "Sampler" in class_type:
        return CLIP_TIP
    return ""


def _accepted(function, inputs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments `function(paths, ...)` takes (all of them with **kwargs)."""
    params = list(inspect.signature(function).parameters.values())[1:]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return inputs
    names = {p.name for p in params}
    return {k: v for k, v in inputs.items() if k in names}

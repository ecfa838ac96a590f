"""Runs one API-format prompt: validate, find cached nodes, schedule, call nodes, emit events (spec §5).

`PromptExecutor.execute(...)` returns an `ExecutionResult` and never raises for a failing node: a
node that raises becomes an `execution_error` event and an "error" result, and the executor stays
usable (caches of nodes that finished stay valid). The graph layer never touches a device; nodes
reach models through `engine`.

Several `execute` calls may run at once (the server's queue parallel), each with its own engine
(`execute(..., engine=lease.engine)`). Each prompt reads and writes the shared output cache through
its own `CacheSession` (signatures, pinned entries; the shared tables are locked), and a node's
per-instance state is held by one running prompt at a time: a second prompt with the same node
id and class meanwhile gets a fresh private state (a new instance of a V1 custom node).
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from diffmesh.errors import InterruptedError_
from diffmesh.graph import events as ev
from diffmesh.graph.cache import CacheEntry, CacheSession, ExecutionCache, compute_signatures
from diffmesh.graph.graph_utils import is_link, unwrap_constant
from diffmesh.graph.schedule import DependencyCycleError, build_execution_list
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


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


def _normalize(result: Any, node_id: str, schema) -> tuple[tuple, dict | None]:
    """A node's return value -> (outputs tuple, ui dict or None)."""
    ui = None
    if isinstance(result, dict):
        ui = result.get("ui")
        result = result.get("result", ())
    if result is None:
        result = ()
    if not isinstance(result, (tuple, list)):
        raise TypeError(f"node {node_id} ({schema.name}) returned {type(result).__name__}; "
                        "execute must return a tuple of outputs or a dict with 'result'/'ui'")
    if schema.outputs and len(result) != len(schema.outputs):
        raise TypeError(f"node {node_id} ({schema.name}) returned {len(result)} outputs but declares "
                        f"{len(schema.outputs)} ({', '.join(schema.output_types)})")
    return tuple(result), ui


class _Run:
    """State of one execute() call."""

    def __init__(self, prompt: dict, prompt_id: str, extra_data: dict, recorder: ev.EventRecorder,
                 interrupt: threading.Event, engine: Any):
        self.prompt = prompt
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

    def progress_state(self, node_id: str, value: float, max_: float, state: str) -> None:
        self.states[node_id] = {"value": value, "max": max_, "state": state, "node_id": node_id,
                                "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
                                "real_node_id": node_id}
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
        the server runs several prompts at once). Safe to call from several threads."""
        extra_data = dict(extra_data or {})
        if outputs_to_execute is None:
            ok, error, outputs_to_execute, node_errors = self.validate(prompt, extra_data.get("partial_execution_targets"))
            if not ok:
                return ExecutionResult("error", validation_error=error, node_errors=node_errors)
        run = _Run(prompt, prompt_id, extra_data, ev.EventRecorder(sink, prompt_id), interrupt or threading.Event(),
                   engine if engine is not None else self.engine)
        try:
            return self._execute(run, list(outputs_to_execute))
        finally:
            if run.cache is not None:
                run.cache.close()

    def _execute(self, run: _Run, outputs: list[str]) -> ExecutionResult:
        prompt = run.prompt
        run.recorder.emit(ev.EXECUTION_START)
        signatures = compute_signatures(prompt, self._is_changed(prompt), self._keyed_by_id(prompt))
        run.cache = self.cache.begin_prompt(prompt, signatures)
        cached = run.cache.find(list(prompt))
        run.recorder.emit(ev.EXECUTION_CACHED, nodes=cached)
        cached_set = set(cached)

        def is_output(nid: str) -> bool:
            return self.registry[prompt[nid]["class_type"]].schema.output_node

        execution = build_execution_list(prompt, outputs, is_output, lambda nid: nid in cached_set)
        node_id = None
        try:
            while execution:
                node_id = execution.next()
                if run.interrupt.is_set():
                    raise Interrupted("Processing interrupted")
                self._run_node(run, node_id)
                execution.complete(node_id)
        except (Interrupted, InterruptedError_):
            run.interrupt.clear()
            data = {"node_id": node_id, "node_type": prompt[node_id]["class_type"] if node_id else None,
                    "executed": list(run.executed)}
            run.recorder.emit(ev.EXECUTION_INTERRUPTED, **data)
            return self._result(run, "interrupted", data)
        except Exception as exc:  # noqa: BLE001 - any node failure becomes execution_error
            data = self._error_data(run, node_id, exc, cached)
            run.recorder.emit(ev.EXECUTION_ERROR, **data)
            return self._result(run, "error", data)
        run.recorder.emit(ev.EXECUTION_SUCCESS)
        return self._result(run, "success", None)

    def _result(self, run: _Run, status: str, error: dict | None) -> ExecutionResult:
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid} for nid in run.ui}
        return ExecutionResult(status, outputs=dict(run.ui), meta=meta, messages=run.recorder.messages,
                               error=error, executed=list(run.executed))

    def _error_data(self, run: _Run, node_id: str | None, exc: Exception, cached: list[str]) -> dict:
        if isinstance(exc, DependencyCycleError):
            return {"node_id": node_id, "node_type": None, "executed": list(run.executed),
                    "exception_message": str(exc), "exception_type": "graph.DependencyCycleError",
                    "traceback": [], "current_inputs": [], "current_outputs": cached}
        inputs = {}
        node = run.prompt.get(node_id, {}) if node_id else {}
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                slot = run.outputs.get(value[0]) or self._cached_outputs(run, value[0]) or []
                values = slot[int(value[1])] if int(value[1]) < len(slot) else []
            else:
                values = [unwrap_constant(value)]
            inputs[name] = [_format_value(v) for v in values]
        return {"node_id": node_id, "node_type": node.get("class_type"), "executed": list(run.executed),
                "exception_message": str(exc), "exception_type": exception_type_name(exc),
                "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": inputs,
                "current_outputs": cached}

    # -- signatures ---------------------------------------------------------------------------------
    def _is_changed(self, prompt: dict) -> dict[str, Any]:
        """IS_CHANGED of every node that defines it, from constant inputs only; raising = NaN (always run)."""
        changed = {}
        for node_id, node in prompt.items():
            definition = self.registry[node["class_type"]]
            if definition.is_changed is None:
                continue
            constants = {k: unwrap_constant(v) for k, v in node.get("inputs", {}).items()
                         if not is_link(v) and definition.schema.input(k) is not None}
            try:
                changed[node_id] = definition.is_changed(self.paths, **constants)
            except Exception:  # noqa: BLE001 - ComfyUI treats a failing IS_CHANGED as "changed"
                changed[node_id] = float("nan")
        return changed

    def _keyed_by_id(self, prompt: dict) -> set[str]:
        keyed = set()
        for node_id, node in prompt.items():
            definition = self.registry[node["class_type"]]
            if definition.not_idempotent or any(kind == "UNIQUE_ID" for _, kind in definition.schema.hidden):
                keyed.add(node_id)
        return keyed

    # -- one node -----------------------------------------------------------------------------------
    @staticmethod
    def _cached_outputs(run: _Run, node_id: str) -> list[list[Any]] | None:
        entry = run.cache.get(node_id) if run.cache is not None else None
        return None if entry is None else entry.outputs

    def _run_node(self, run: _Run, node_id: str) -> None:
        entry = run.cache.get(node_id)
        if entry is not None:
            run.outputs[node_id] = entry.outputs
            if entry.ui is not None:
                run.ui[node_id] = entry.ui
                run.recorder.emit(ev.EXECUTED, node=node_id, display_node=node_id, output=entry.ui)
            run.executed.append(node_id)
            run.progress_state(node_id, 1, 1, "finished")
            return
        node = run.prompt[node_id]
        definition = self.registry[node["class_type"]]
        run.progress_state(node_id, 0, 1, "running")
        run.recorder.emit(ev.EXECUTING, node=node_id, display_node=node_id)
        args = self._gather(run, node_id, node, definition.schema)
        ctx = self._context(run, node_id, node["class_type"])
        outputs, ui = self._call(definition, ctx, args, node_id)
        run.outputs[node_id] = outputs
        run.executed.append(node_id)
        run.cache.set(node_id, CacheEntry(outputs, ui))
        if ui is not None:
            run.ui[node_id] = ui
            run.recorder.emit(ev.EXECUTED, node=node_id, display_node=node_id, output=ui)
        last = run.states.get(node_id, {})
        run.progress_state(node_id, last.get("max", 1), last.get("max", 1), "finished")

    def _gather(self, run: _Run, node_id: str, node: dict, schema) -> dict[str, list]:
        """Every input as a list (spec §5.3): constants -> [v], links -> the upstream slot list."""
        args: dict[str, list] = {}
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                source = run.outputs.get(value[0])
                if source is None:
                    source = self._cached_outputs(run, value[0])
                if source is None or int(value[1]) >= len(source):
                    raise RuntimeError(f"node {node_id} input '{name}': node {value[0]} has no output "
                                       f"{value[1]} (was it removed or muted?)")
                args[name] = source[int(value[1])]
            elif schema.input(name) is not None:
                args[name] = [unwrap_constant(value)]
        hidden = {"PROMPT": run.prompt, "EXTRA_PNGINFO": run.extra_data.get("extra_pnginfo"), "UNIQUE_ID": node_id,
                  "AUTH_TOKEN_COMFY_ORG": run.extra_data.get("auth_token_comfy_org"),
                  "API_KEY_COMFY_ORG": run.extra_data.get("api_key_comfy_org")}
        for name, kind in schema.hidden:
            args[name] = [hidden.get(kind)]
        return args

    def _context(self, run: _Run, node_id: str, class_type: str) -> NodeContext:
        preview = run.extra_data.get("preview_method")
        if preview in (None, "default"):
            preview = self.options.get("preview_method", "none")
        options = {**self.options, "preview_method": preview}

        def on_progress(value: int, max_: int, image: Any) -> None:
            if run.interrupt.is_set():
                if run.engine is not None:
                    run.engine.interrupt()
                raise Interrupted("Processing interrupted")
            run.progress_state(node_id, value, max_, "running")
            if image is not None:
                run.recorder.emit(ev.PREVIEW, node=node_id, display_node=node_id, image=image)
            run.recorder.emit(ev.PROGRESS, value=value, max=max_, node=node_id)

        return NodeContext(engine=run.engine, paths=self.paths, node_id=node_id, prompt=run.prompt,
                           extra_data=run.extra_data, state=run.cache.state(node_id, class_type), options=options,
                           on_progress=on_progress, interrupt=run.interrupt)

    def _call(self, definition, ctx: NodeContext, args: dict[str, list], node_id: str):
        """Call once per list element (or once with the lists) and merge results (spec §5.3)."""
        schema = definition.schema
        if schema.input_is_list:
            calls = [args]
        elif any(len(v) == 0 for v in args.values()):
            calls = []
        else:
            count = max((len(v) for v in args.values()), default=1)
            calls = [{k: v[i] if len(v) > i else v[-1] for k, v in args.items()} for i in range(count)]
        outputs: list[list[Any]] = [[] for _ in schema.outputs]
        ui: dict | None = None
        for call in calls:
            ctx.check_interrupt()
            result, call_ui = _normalize(definition.execute(ctx, **call), node_id, schema)
            for slot, value in enumerate(result[: len(outputs)]):
                if schema.outputs[slot].is_list:
                    outputs[slot].extend(value)
                else:
                    outputs[slot].append(value)
            if call_ui is not None:
                ui = {k: [] for k in call_ui} if ui is None else ui
                for key in ui:
                    ui[key].extend(call_ui.get(key, []))
        return outputs, ui

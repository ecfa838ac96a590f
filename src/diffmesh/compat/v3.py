"""A ComfyUI V3 node class (`io.ComfyNode`) as a diffmesh `NodeDef`.

The schema comes from `define_schema()` (ComfyUI's finalize rules applied), so /object_info shows
what ComfyUI shows for it. `execute` is called as ComfyUI calls it: a classmethod on a per-call
subclass whose `hidden` holds the hidden inputs; `fingerprint_inputs` is IS_CHANGED,
`validate_inputs` is VALIDATE_INPUTS, `check_lazy_status` serves lazy inputs. A `NodeOutput`
becomes diffmesh's `{"result", "ui", "expand"}` return value.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from diffmesh.compat import v3_io as io
from diffmesh.nodes.base import InputSpec, NodeDef, NodeSchema, OutputSpec


def is_v3_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, io.ComfyNode)


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name).__func__ is not getattr(io.ComfyNode, name).__func__


def _input_spec(item: Any) -> InputSpec:
    options = item.as_dict()
    options.pop("optional", None)
    return InputSpec(name=item.id, type=item.get_io_type(), options=options,
                     section="optional" if item.optional else "required")


def schema_of(cls: type, module_name: str) -> tuple[io.Schema, NodeSchema]:
    declared = cls.define_schema()
    if not isinstance(declared, io.Schema):
        raise TypeError(f"{cls.__name__}.define_schema() returned {type(declared).__name__}, expected io.Schema")
    declared.finalize()
    outputs = tuple(OutputSpec(o.io_type, o.display_name, bool(o.is_output_list)) for o in declared.outputs)
    schema = NodeSchema(
        name=declared.node_id, display_name=declared.display_name or declared.node_id, category=declared.category,
        inputs=tuple(_input_spec(i) for i in declared.inputs),
        outputs=outputs, hidden=tuple((item.name, item.value) for item in declared.hidden),
        description=declared.description, output_node=declared.is_output_node,
        output_tooltips=tuple(o.tooltip for o in declared.outputs), python_module=module_name,
        input_is_list=declared.is_input_list, deprecated=declared.is_deprecated,
        experimental=declared.is_experimental, has_intermediate_output=declared.has_intermediate_output,
        search_aliases=tuple(declared.search_aliases or ()), essentials_category=declared.essentials_category,
        dev_only=declared.is_dev_only)
    return declared, schema


def node_result(output: Any) -> Any:
    """ComfyUI's V3 return values as diffmesh's: NodeOutput, a dict, a tuple, or None."""
    from diffmesh.graph.graph_utils import ExecutionBlocker

    if not isinstance(output, io.NodeOutput):
        return output if output is not None else {}
    if output.block_execution is not None:
        return {"result": ExecutionBlocker(output.block_execution)}
    result: dict[str, Any] = {"result": tuple(output.args)}
    ui = output.ui
    if ui is not None:
        result["ui"] = ui.as_dict() if hasattr(ui, "as_dict") else dict(ui)
    if output.expand is not None:
        result["expand"] = output.expand
    return result


def _runner(cls: type, hidden_names: list[str], running: Callable) -> Callable:
    def execute(ctx, **inputs):
        hidden = {name: inputs.pop(name, None) for name in hidden_names}
        clone = type(cls.__name__, (cls,), {"hidden": io.HiddenHolder(hidden)})   # ComfyUI: a class per call
        result = running(ctx, lambda: clone.execute(**inputs))
        if inspect.iscoroutine(result):
            async def finished():
                return node_result(await result)
            return finished()
        return node_result(result)
    return execute


def adapt_v3_class(cls: type, module_name: str, running: Callable, hook: Callable) -> NodeDef:
    """`running(ctx, call)` runs a call as the running node (progress, interrupt, imports);
    `hook(cls, name)` makes a VALIDATE_INPUTS-style validator of the classmethod `name`."""
    declared, schema = schema_of(cls, module_name)
    hidden_names = [item.name for item in declared.hidden]
    lazy = any(getattr(i, "lazy", None) for i in declared.inputs)

    def is_changed(paths, **inputs):
        return running(None, lambda: cls.fingerprint_inputs(**{k: v for k, v in inputs.items()
                                                                 if k not in hidden_names}))

    def check_lazy_status(ctx, **inputs):
        return running(ctx, lambda: cls.check_lazy_status(**{k: v for k, v in inputs.items() if k not in hidden_names}))

    return NodeDef(schema=schema, execute=_runner(cls, hidden_names, running),
                   is_changed=is_changed if _overrides(cls, "fingerprint_inputs") else None,
                   validate_inputs=hook(cls, "validate_inputs") if _overrides(cls, "validate_inputs") else None,
                   not_idempotent=declared.not_idempotent,
                   check_lazy_status=check_lazy_status if lazy else None,
                   is_async=inspect.iscoroutinefunction(cls.execute))

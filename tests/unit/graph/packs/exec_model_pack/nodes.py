import asyncio

try:                                       # where ComfyUI packs import it from
    from comfy_execution.graph import ExecutionBlocker
except ImportError:                        # diffmesh without its ComfyUI compatibility layer
    from diffmesh.graph.graph_utils import ExecutionBlocker

# Every call a node makes lands here, so tests can see what ran (a test pack, not a pattern).
CALLS = []


class IntConst:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000, "max": 1000})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests/exec"

    def run(self, value):
        CALLS.append(("IntConst", value))
        return (value,)


class IntAdd:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 0}), "b": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "add"
    CATEGORY = "tests/exec"

    def add(self, a, b):
        CALLS.append(("IntAdd", a, b))
        return (a + b,)


class IntLess:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 0}), "b": ("INT", {"default": 0})}}

    RETURN_TYPES = ("BOOLEAN",)
    FUNCTION = "compare"
    CATEGORY = "tests/exec"

    def compare(self, a, b):
        return (a < b,)


class ShowInt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "tests/exec"

    def show(self, value):
        return {"ui": {"value": [value]}}


class LazySwitch:
    """Only the branch the switch picks is evaluated."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"switch": ("BOOLEAN", {"default": True}),
                             "on_true": ("INT", {"lazy": True}),
                             "on_false": ("INT", {"lazy": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "pick"
    CATEGORY = "tests/exec"

    def check_lazy_status(self, switch, on_true=None, on_false=None):
        CALLS.append(("check_lazy_status", switch, on_true, on_false))
        if switch and on_true is None:
            return ["on_true"]
        if not switch and on_false is None:
            return ["on_false"]
        return []

    def pick(self, switch, on_true=None, on_false=None):
        return (on_true if switch else on_false,)


class AsyncDelay:
    """async def FUNCTION: independent ones run at the same time."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0}), "seconds": ("FLOAT", {"default": 0.2})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests/exec"

    async def run(self, value, seconds, unique_id):
        CALLS.append(("start", unique_id))
        await asyncio.sleep(seconds)
        CALLS.append(("end", unique_id))
        return (value,)

    @classmethod
    async def VALIDATE_INPUTS(cls, seconds):
        await asyncio.sleep(0)
        return True if seconds >= 0 else "seconds must not be negative"


class AsyncFail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests/exec"

    async def run(self, value):
        await asyncio.sleep(0)
        raise RuntimeError(f"async failure {value}")


class DoubleByExpansion:
    """Returns an expansion: one IntAdd node adding the value to itself."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "expand"
    CATEGORY = "tests/exec"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")                   # runs every time; its expansion's nodes stay cached

    def expand(self, value, unique_id):
        CALLS.append(("DoubleByExpansion", value))
        add_id = f"{unique_id}.double"
        graph = {add_id: {"class_type": "IntAdd", "inputs": {"a": value, "b": value}}}
        return {"result": ([add_id, 0],), "expand": graph}


class SumDown:
    """A loop by recursion: total + n + (n-1) + ... + 1, one expansion per step."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"total": ("INT", {"default": 0}), "n": ("INT", {"default": 0, "min": 0})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "step"
    CATEGORY = "tests/exec"

    def step(self, total, n, unique_id):
        if n == 0:
            return (total,)
        graph = {f"{unique_id}.add": {"class_type": "IntAdd", "inputs": {"a": total, "b": n}},
                 f"{unique_id}.next": {"class_type": "SumDown",
                                       "inputs": {"total": [f"{unique_id}.add", 0], "n": n - 1}}}
        return {"result": ([f"{unique_id}.next", 0],), "expand": graph}


class WhileOpen:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"initial": ("INT", {"default": 0})}}

    RETURN_TYPES = ("FLOW_CONTROL", "INT")
    FUNCTION = "open"
    CATEGORY = "tests/exec"

    def open(self, initial):
        return ("stub", initial)


class WhileClose:
    """While `condition`, copies the loop body (the nodes between the open node and this one)
    with the current value as the open node's initial value, as loop packs do."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"flow": ("FLOW_CONTROL", {"rawLink": True}),
                             "condition": ("BOOLEAN", {"forceInput": True}),
                             "value": ("INT", {"forceInput": True})},
                "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "close"
    CATEGORY = "tests/exec"

    @classmethod
    def VALIDATE_INPUTS(cls, flow):
        # a rawLink input is validated as the link itself, not as None
        return True if isinstance(flow, list) and len(flow) == 2 else f"flow must be a raw link, got {flow!r}"

    def _ancestors(self, dynprompt, node_id, found):
        for value in dynprompt.get_node(node_id)["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and value[0] not in found:
                found.add(value[0])
                self._ancestors(dynprompt, value[0], found)
        return found

    def close(self, flow, condition, value, dynprompt, unique_id):
        if not condition:
            return (value,)
        open_id = flow[0]
        body = {n for n in self._ancestors(dynprompt, unique_id, set())
                if open_id in self._ancestors(dynprompt, n, set())}
        body |= {open_id, unique_id}
        rename = {n: f"{unique_id}.{n.split('.')[-1]}" for n in body}
        graph = {}
        for node_id in body:
            node = dynprompt.get_node(node_id)
            inputs = {k: ([rename[v[0]], v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in rename else v)
                      for k, v in node["inputs"].items()}
            graph[rename[node_id]] = {"class_type": node["class_type"], "inputs": inputs,
                                      "override_display_id": dynprompt.get_display_node_id(node_id)}
        graph[rename[open_id]]["inputs"]["initial"] = value
        return {"result": ([rename[unique_id], 0],), "expand": graph}


class MakeList:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"start": ("INT", {"default": 0}), "count": ("INT", {"default": 3})}}

    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "make"
    CATEGORY = "tests/exec"

    def make(self, start, count):
        return (list(range(start, start + count)),)


class SumList:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True})}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("INT",)
    FUNCTION = "total"
    CATEGORY = "tests/exec"

    def total(self, values):
        return (sum(values),)


class HiddenProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID",
                           "dynprompt": "DYNPROMPT"}}

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "tests/exec"

    def probe(self, value, prompt, extra_pnginfo, unique_id, dynprompt):
        return {"ui": {"classes": sorted(n["class_type"] for n in prompt.values()),
                       "pnginfo": [extra_pnginfo], "unique_id": [unique_id],
                       "original_is_prompt": [dynprompt.get_original_prompt() is prompt]}}


def _check_even(value, input_types):
    """A plain function set on the class: called without the class."""
    CALLS.append(("VALIDATE_INPUTS", value, dict(input_types)))
    if value is None:                     # linked: the value is not known at validation
        return True if input_types.get("value") == "INT" else f"value must be an INT, got {input_types}"
    return True if value % 2 == 0 else f"{value} is odd"


class EvenOnly:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "max": 10})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests/exec"
    VALIDATE_INPUTS = _check_even

    def run(self, value):
        return (value,)


class ChangedByConstant:
    """IS_CHANGED written as a plain function in the class body; linked inputs arrive as None."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "salt": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests/exec"

    def IS_CHANGED(value, salt):
        CALLS.append(("IS_CHANGED", value, salt))
        return salt

    def run(self, value, salt):
        CALLS.append(("ChangedByConstant", value))
        return (value,)


class BlockIf:
    """Blocks its users (with a message, or silently) instead of passing the value on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0}), "block": ("BOOLEAN", {"default": False}),
                             "message": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests/exec"

    def run(self, value, block, message):
        return (ExecutionBlocker(message or None) if block else value,)


class DynamicCycle:
    """Expands into two nodes that feed each other: a cycle that only exists at run time."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "expand"
    CATEGORY = "tests/exec"

    def expand(self, value, unique_id):
        first, second = f"{unique_id}.first", f"{unique_id}.second"
        graph = {first: {"class_type": "IntAdd", "inputs": {"a": value, "b": [second, 0]}},
                 second: {"class_type": "IntAdd", "inputs": {"a": value, "b": [first, 0]}}}
        return {"result": ([second, 0],), "expand": graph}


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (BlockIf, DynamicCycle, 
    IntConst, IntAdd, IntLess, ShowInt, LazySwitch, AsyncDelay, AsyncFail, DoubleByExpansion, SumDown,
    WhileOpen, WhileClose, MakeList, SumList, HiddenProbe, EvenOnly, ChangedByConstant)}

"""Custom nodes: ComfyUI V1 classes adapted to `NodeDef`, loaded from custom_nodes folders, run by
the real `PromptExecutor` (these nodes need no engine)."""

from __future__ import annotations

import logging
import sys
import textwrap
import threading

import pytest

from diffmesh.config.paths import Paths
from diffmesh.graph.executor import PromptExecutor
from diffmesh.nodes.custom import adapt_v1_class, custom_node_dirs, load_into, module_paths
from diffmesh.nodes.registry import build_registry

PACKAGE_INIT = '''
from .nodes import Repeat, Join, Shout

NODE_CLASS_MAPPINGS = {"Repeat": Repeat, "Join": Join, "Shout": Shout}
NODE_DISPLAY_NAME_MAPPINGS = {"Repeat": "Repeat text"}
'''

PACKAGE_NODES = '''
CALLS = []


class Repeat:
    """Repeats a word: OUTPUT_IS_LIST, RETURN_NAMES, a combo, IS_CHANGED."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"word": ("STRING", {"default": "hi"}),
                             "times": ("INT", {"default": 2, "min": 1, "max": 5}),
                             "case": (["lower", "upper"],)}}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("words",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "repeat"
    CATEGORY = "text/tests"
    DESCRIPTION = "repeats a word"

    @classmethod
    def IS_CHANGED(cls, word, times, case):
        return word

    def repeat(self, word, times, case):
        CALLS.append(word)
        word = word.upper() if case == "upper" else word
        return ([word] * times,)


class Join:
    """Takes the whole list at once (INPUT_IS_LIST) and shows it (output node with ui)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"words": ("STRING", {"forceInput": True}), "sep": ("STRING", {"default": "-"})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("STRING",)
    FUNCTION = "join"
    OUTPUT_NODE = True
    CATEGORY = "text/tests"

    def join(self, words, sep, unique_id):
        text = sep[0].join(words)
        return {"ui": {"text": [text], "node": unique_id}, "result": (text,)}  # hidden inputs are lists too


class Shout:
    """VALIDATE_INPUTS takes over the check of `level` (its max is not enforced)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True}), "level": ("INT", {"default": 1, "max": 3})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "shout"
    OUTPUT_NODE = True

    @classmethod
    def VALIDATE_INPUTS(cls, level):
        return True if level < 10 else f"level {level} is too loud"

    def shout(self, text, level):
        return {"ui": {"text": [text + "!" * level]}, "result": (text,)}
'''


@pytest.fixture
def base(tmp_path):
    package = tmp_path / "custom_nodes" / "text_tools"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PACKAGE_INIT)
    (package / "nodes.py").write_text(PACKAGE_NODES)
    return tmp_path


def _executor(base, **kwargs):
    paths = Paths.build(base)
    registry = build_registry()
    report = load_into(registry, paths, **kwargs)
    return PromptExecutor(registry, None, paths), report


def test_v1_package_nodes_appear_in_object_info_like_comfyui(base):
    executor, report = _executor(base)
    assert report.loaded == {"custom_nodes.text_tools": ["Repeat", "Join", "Shout"]} and not report.failed
    info = executor.object_info()
    repeat = info["Repeat"]
    assert repeat["python_module"] == "custom_nodes.text_tools"
    assert repeat["display_name"] == "Repeat text" and info["Join"]["display_name"] == "Join"
    assert repeat["input"]["required"]["case"] == [["lower", "upper"]]
    assert repeat["input"]["required"]["times"] == ["INT", {"default": 2, "min": 1, "max": 5}]
    assert repeat["input_order"] == {"required": ["word", "times", "case"]}
    assert repeat["output"] == ["STRING"] and repeat["output_name"] == ["words"] and repeat["output_is_list"] == [True]
    assert repeat["category"] == "text/tests" and repeat["description"] == "repeats a word"
    assert info["Join"]["output_node"] is True and info["Join"]["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert info["Shout"]["category"] == "sd"                       # ComfyUI's default category
    assert list(info)[-3:] == ["Repeat", "Join", "Shout"] and "KSampler" in info


def test_v1_nodes_run_with_list_outputs_list_inputs_ui_and_is_changed_caching(base):
    executor, _ = _executor(base)
    prompt = {"1": {"class_type": "Repeat", "inputs": {"word": "ab", "times": 3, "case": "upper"}},
              "2": {"class_type": "Join", "inputs": {"words": ["1", 0], "sep": "+"}}}
    result = executor.execute(prompt, "p1", {}, None, threading.Event())
    assert result.status == "success", result.error
    assert result.outputs == {"2": {"text": ["AB+AB+AB"], "node": ["2"]}}
    nodes_file = str(base / "custom_nodes" / "text_tools" / "nodes.py")
    calls = next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == nodes_file).CALLS
    assert calls == ["ab"]
    executor.execute(prompt, "p2", {}, None, threading.Event())
    assert calls == ["ab"]                                          # same IS_CHANGED value: cached
    prompt["1"]["inputs"]["word"] = "cd"
    assert executor.execute(prompt, "p3", {}, None, threading.Event()).outputs["2"]["text"] == ["CD+CD+CD"]


def test_v1_validate_inputs_replaces_the_builtin_checks_of_the_inputs_it_names(base):
    executor, _ = _executor(base)

    def prompt(level):
        return {"1": {"class_type": "Repeat", "inputs": {"word": "a", "times": 1, "case": "lower"}},
                "2": {"class_type": "Shout", "inputs": {"text": ["1", 0], "level": level}}}
    ok, _, outputs, node_errors = executor.validate(prompt(5))      # above max=3, but VALIDATE_INPUTS says fine
    assert ok and outputs == ["2"], node_errors
    ok, _, _, node_errors = executor.validate(prompt(12))
    assert not ok and node_errors["2"]["errors"][0]["type"] == "custom_validation_failed"
    assert "too loud" in node_errors["2"]["errors"][0]["details"]
    bad_combo = prompt(1)
    bad_combo["1"]["inputs"]["case"] = "title"
    ok, _, _, node_errors = executor.validate(bad_combo)
    assert not ok and node_errors["1"]["errors"][0]["type"] == "value_not_in_list"


def test_broken_module_is_logged_with_path_and_error_and_the_others_still_load(base, caplog):
    (base / "custom_nodes" / "broken.py").write_text("import no_such_module_anywhere\n")
    (base / "custom_nodes" / "no_mappings.py").write_text("X = 1\n")
    with caplog.at_level(logging.ERROR, logger="diffmesh.nodes.custom"):
        executor, report = _executor(base)
    failed = {path.name: error for path, error in report.failed}
    assert set(failed) == {"broken.py", "no_mappings.py"}
    assert "no_such_module_anywhere" in failed["broken.py"] and "NODE_CLASS_MAPPINGS" in failed["no_mappings.py"]
    logged = caplog.text
    assert str(base / "custom_nodes" / "broken.py") in logged and "No module named 'no_such_module_anywhere'" in logged
    assert "Repeat" in executor.registry


def test_folders_disabled_names_extra_dirs_and_the_disable_all_flag(base, tmp_path_factory):
    folder = base / "custom_nodes"
    (folder / "off.py.disabled").write_text("raise RuntimeError('must not load')\n")
    (folder / "__pycache__").mkdir()
    (folder / "notes.txt").write_text("not a module")
    assert [p.name for p in module_paths(folder)] == ["text_tools"]
    extra = tmp_path_factory.mktemp("more_nodes")
    (extra / "single.py").write_text(textwrap.dedent('''
        class Const:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            def run(self):
                return (7,)
        class KSampler(Const):
            pass
        NODE_CLASS_MAPPINGS = {"Const": Const, "KSampler": KSampler}
    '''))
    paths = Paths.build(base)
    assert custom_node_dirs(paths, [extra]) == [folder, extra]
    executor, report = _executor(base, extra_dirs=[str(extra)])
    assert report.loaded["custom_nodes.single"] == ["Const"]        # a core name is never replaced
    assert executor.registry["KSampler"].schema.python_module != "custom_nodes.single"
    executor, report = _executor(base, extra_dirs=[str(extra)], disabled=True)
    assert report.loaded == {} and "Const" not in executor.registry and "Repeat" not in executor.registry


def test_a_class_that_is_not_a_v1_node_is_refused_with_its_name():
    class NotANode:
        pass

    with pytest.raises(TypeError, match="Thing: a V1 node class needs INPUT_TYPES"):
        adapt_v1_class("Thing", NotANode)

"""The compatibility layer in-process: ComfyUI's module names import only inside `active()`, with
stable identities; missing names say where the supported subset is; `folder_paths` reads and
extends diffmesh's Paths; `nodes` runs core nodes in the calling node's context; V3 classes become
NodeDefs with ComfyUI's schema and calling conventions; pack routes match as aiohttp's do."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from diffmesh.compat import CompatLayer, PackServer
from diffmesh.config.paths import Paths
from diffmesh.graph.graph_utils import ExecutionBlocker
from diffmesh.nodes.base import Interrupted, NodeContext
from diffmesh.nodes.custom import _running, load_into
from diffmesh.nodes.registry import build_registry
from diffmesh.nodes.sampling import SAMPLER_NAMES

NAMES = ("folder_paths", "comfy", "comfy.utils", "comfy.model_management", "nodes", "server", "comfy_api.latest")


@pytest.fixture
def layer(tmp_path):
    paths = Paths.build(tmp_path / "base")
    paths.ensure_dirs()
    return CompatLayer(paths, build_registry())


def _context(layer, node_id="7", interrupt=None) -> NodeContext:
    return NodeContext(engine=None, paths=layer.paths, node_id=node_id, prompt={}, extra_data={"client_id": "c1"},
                       state={}, interrupt=interrupt or threading.Event())


def test_comfyui_modules_import_only_inside_active(layer):
    with pytest.raises(ImportError):
        import folder_paths  # noqa: F401
    with layer.active():
        import comfy.model_management
        import folder_paths  # noqa: F401
        import server  # noqa: F401
        assert comfy.model_management.InterruptProcessingException is Interrupted
    assert not any(sys.modules.get(name) is layer.module(name) for name in NAMES)
    assert not any(getattr(f, "layer", None) is layer for f in sys.meta_path)
    with pytest.raises(ImportError):
        import comfy.utils  # noqa: F401


def test_a_lazy_import_while_a_node_runs_gets_the_modules_of_load_time(layer):
    with layer.active():
        import comfy.utils as first
    with layer.active():
        import comfy.utils as again
    assert again is first and again.ProgressBar is first.ProgressBar


def test_active_is_counted_across_threads(layer):
    inside, release, imported = threading.Event(), threading.Event(), []

    def other():
        with layer.active():
            inside.set()
            release.wait(10)
            import nodes
            imported.append(nodes.MAX_RESOLUTION)

    worker = threading.Thread(target=other)
    worker.start()
    inside.wait(10)
    with layer.active():
        pass                                    # this thread leaves first: the other still imports
    release.set()
    worker.join(10)
    assert imported == [16384] and sys.modules.get("nodes") is not layer.module("nodes")


def test_missing_module_and_missing_name_say_where_the_subset_is(layer):
    with layer.active():
        with pytest.raises(ModuleNotFoundError, match=r"comfy\.ldm.*offers only comfy, .*docs/custom_nodes\.md"):
            import comfy.ldm.modules  # noqa: F401
        with pytest.raises(ModuleNotFoundError, match="'comfy_extras'.*does not offer comfy_extras"):
            import comfy_extras.nodes_mask  # noqa: F401
        import comfy.sd
        with pytest.raises(AttributeError, match="load_checkpoint_guess_config.*docs/custom_nodes.md"):
            comfy.sd.load_checkpoint_guess_config


def test_folder_paths_reads_and_extends_diffmesh_paths(layer, tmp_path):
    extra = tmp_path / "ipadapter"
    extra.mkdir()
    (extra / "a.bin").write_bytes(b"1")
    (layer.paths.input_dir / "in.png").write_bytes(b"x")
    with layer.active():
        import folder_paths
    folder_paths.add_model_folder_path("ipadapter", str(extra))
    assert folder_paths.get_filename_list("ipadapter") == ["a.bin"] == layer.paths.list("ipadapter")
    assert folder_paths.get_full_path("ipadapter", "a.bin") == str(extra / "a.bin")
    assert folder_paths.get_full_path("ipadapter", "../ipadapter/a.bin") is None      # never leaves a folder
    with pytest.raises(FileNotFoundError, match="Model in folder 'ipadapter' with filename 'b.bin' not found."):
        folder_paths.get_full_path_or_raise("ipadapter", "b.bin")
    folder_paths.folder_names_and_paths["mine"] = ([str(extra)], {".safetensors"})
    assert folder_paths.get_filename_list("mine") == [] and folder_paths.get_folder_paths("mine") == [str(extra)]
    assert folder_paths.get_folder_paths("clip") == [str(p) for p in layer.paths.models["text_encoders"]]
    assert folder_paths.models_dir == str(layer.paths.base / "models")
    assert folder_paths.get_annotated_filepath("x.png [output]") == str(layer.paths.output_dir / "x.png")
    assert folder_paths.exists_annotated_filepath("in.png") and not folder_paths.exists_annotated_filepath("no.png")
    with pytest.raises(ValueError, match="Invalid file path"):
        folder_paths.get_annotated_filepath("../../etc/passwd")
    out = str(layer.paths.output_dir)
    (layer.paths.output_dir / "shot_00004_.png").write_bytes(b"")
    assert folder_paths.get_save_image_path("shot", out, 8, 8)[1:4] == ("shot", 5, "")


def test_nodes_module_runs_core_nodes_in_the_calling_nodes_context(layer):
    with layer.active():
        import nodes
    assert nodes.EmptyLatentImage.FUNCTION == "generate" and "KSampler" in nodes.NODE_CLASS_MAPPINGS
    assert nodes.NODE_CLASS_MAPPINGS["KSampler"] is nodes.KSampler
    with pytest.raises(RuntimeError, match="only be called while a custom node runs"):
        nodes.EmptyLatentImage().generate(64, 64, 1)
    latent = _running(_context(layer), lambda: nodes.EmptyLatentImage().generate(64, 48, batch_size=2), layer)[0]
    assert latent["samples"].shape == (2, 4, 6, 8)


def test_model_management_interrupt_is_the_running_prompts(layer):
    with layer.active():
        import comfy.model_management as mm
        import comfy.utils
    ctx = _context(layer)

    def body():
        bar = comfy.utils.ProgressBar(4)
        bar.update(1)
        mm.interrupt_current_processing()
        assert mm.processing_interrupted()
        mm.throw_exception_if_processing_interrupted()

    with pytest.raises(mm.InterruptProcessingException):
        _running(ctx, body, layer)
    assert ctx.interrupt.is_set() and not mm.processing_interrupted()          # outside a node: nothing


V3_PACK = '''
from comfy_api.latest import ComfyExtension, io


class Pick(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="Pick", display_name="Pick one", category="logic", is_output_node=True,
                         inputs=[io.Boolean.Input("first", default=True),
                                 io.Int.Input("a", lazy=True, optional=True, control_after_generate=True),
                                 io.Int.Input("b", lazy=True, optional=True)],
                         outputs=[io.Int.Output(tooltip="the picked value")], hidden=[io.Hidden.unique_id])

    @classmethod
    def check_lazy_status(cls, first, a=None, b=None):
        return ["a"] if first else ["b"]

    @classmethod
    def fingerprint_inputs(cls, first, a=None, b=None):
        return first

    @classmethod
    def validate_inputs(cls, first):
        return True if isinstance(first, bool) else "first must be a boolean"

    @classmethod
    def execute(cls, first, a=None, b=None):
        if a == -1:
            return io.NodeOutput(block_execution="no value")
        return io.NodeOutput(a if first else b, ui={"text": [cls.hidden.unique_id]})


class Ext(ComfyExtension):
    async def get_node_list(self):
        return [Pick]


async def comfy_entrypoint():
    return Ext()
'''


def test_v3_node_becomes_a_nodedef_with_comfyuis_schema_and_conventions(tmp_path):
    paths = Paths.build(tmp_path / "base")
    (paths.base / "custom_nodes").mkdir(parents=True)
    (paths.base / "custom_nodes" / "picker.py").write_text(V3_PACK)
    registry = build_registry()
    report = load_into(registry, paths)
    assert report.loaded == {"custom_nodes.picker": ["Pick"]} and not report.failed
    pick = registry["Pick"]
    info = pick.schema.to_object_info(paths)
    assert info["input"] == {"required": {"first": ["BOOLEAN", {"default": True}]},
                             "optional": {"a": ["INT", {"lazy": True, "control_after_generate": True}],
                                          "b": ["INT", {"lazy": True}]},
                             "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT",
                                        "extra_pnginfo": "EXTRA_PNGINFO"}}
    assert info["output"] == ["INT"] and info["output_name"] == ["INT"] and info["output_node"] is True
    assert info["output_tooltips"] == ["the picked value"] and info["python_module"] == "custom_nodes.picker"
    ctx = _context(report.layer, node_id="12")
    hidden = {"unique_id": "12", "prompt": {}, "extra_pnginfo": None}
    assert pick.check_lazy_status(ctx, first=False, a=None, b=None, **hidden) == ["b"]
    assert pick.is_changed(paths, first=True, a=None, b=None, **hidden) is True
    assert pick.validated_input_names() == ["first"]
    assert pick.validate_inputs(paths, first=3) == "first must be a boolean"
    assert pick.execute(ctx, first=False, a=1, b=2, **hidden) == {"result": (2,), "ui": {"text": ["12"]}}
    blocked = pick.execute(ctx, first=True, a=-1, b=2, **hidden)["result"]
    assert isinstance(blocked, ExecutionBlocker) and blocked.message == "no value"


def test_pack_routes_match_aiohttp_patterns_and_the_api_prefix():
    packs = PackServer()

    async def handler(request):
        return None

    with CompatLayer(Paths.build("/nonexistent-base"), build_registry(), server=packs).active():
        from server import PromptServer
        PromptServer.instance.routes.get("/pack/items/{item_id}")(handler)
        PromptServer.instance.routes.post("/pack/{kind:(a|b)}/save")(handler)
    assert packs.match("GET", "/pack/items/42")[1] == {"item_id": "42"}
    assert packs.match("GET", "/api/pack/items/x-1")[1] == {"item_id": "x-1"}
    assert packs.match("HEAD", "/pack/items/42") is not None
    assert packs.match("GET", "/pack/items/4/2") is None and packs.match("POST", "/pack/items/42") is None
    assert packs.match("POST", "/pack/b/save")[1] == {"kind": "b"} and packs.match("POST", "/pack/c/save") is None


def test_comfy_types_and_sampler_lists_as_comfyui(layer):
    with layer.active():
        from comfy.comfy_types import IO
        import comfy.samplers
    assert not (IO.ANY != "IMAGE") and not (IO.NUMBER != "INT") and (IO.IMAGE != "MASK")
    assert str(IO.IMAGE) == "IMAGE"
    assert comfy.samplers.KSampler.SAMPLERS == list(SAMPLER_NAMES) == comfy.samplers.SAMPLER_NAMES
    assert comfy.samplers.KSampler.SCHEDULERS[:3] == ["simple", "sgm_uniform", "karras"]


def test_get_torch_device_is_the_runtimes_main_device(tmp_path):
    layer = CompatLayer(Paths.build(tmp_path), build_registry(), device="cuda:1")
    with layer.active():
        import comfy.model_management as mm
    assert mm.get_torch_device() == torch.device("cuda:1") and mm.intermediate_device() == torch.device("cpu")

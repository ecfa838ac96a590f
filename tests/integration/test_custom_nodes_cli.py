"""`diffmesh run` loads custom nodes from `--custom-nodes-dir` (and none with `--disable-all-custom-nodes`)."""

import json

from diffmesh.cli import main

WRITER = '''
class WriteText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""}), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "write"
    OUTPUT_NODE = True

    def write(self, text, path):
        with open(path, "w") as handle:
            handle.write(text)
        return {"ui": {"text": [text]}}


NODE_CLASS_MAPPINGS = {"WriteText": WriteText}
'''


def _run(tmp_path, capsys, *flags):
    nodes = tmp_path / "nodes"
    nodes.mkdir(exist_ok=True)
    (nodes / "writer.py").write_text(WRITER)
    target = tmp_path / "written.txt"
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "WriteText", "inputs": {"text": "from a custom node",
                                                                              "path": str(target)}}}))
    code = main(["run", str(workflow), "--base-directory", str(tmp_path / "base"), "--cpu",
                 "--custom-nodes-dir", str(nodes), *flags])
    return code, capsys.readouterr().err, target


def test_run_executes_a_node_from_custom_nodes_dir(tmp_path, capsys):
    code, err, target = _run(tmp_path, capsys)
    assert code == 0, err
    assert target.read_text() == "from a custom node"


def test_run_with_custom_nodes_disabled_reports_the_unknown_node(tmp_path, capsys):
    code, err, target = _run(tmp_path, capsys, "--disable-all-custom-nodes")
    assert code == 1 and "WriteText" in err and not target.exists()

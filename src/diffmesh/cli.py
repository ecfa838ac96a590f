"""The `diffmesh` command: run a workflow, make test models, and dispatch to serve / doctor / bench.

Bad input (missing or malformed file, unknown node, wrong type, missing model, bad value) prints
one clear message on stderr and exits 1; flag errors exit 2. Never a traceback for user errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
from typing import Any

from diffmesh.errors import ConfigError, DiffmeshError

# subcommand -> (module, help); each module offers add_arguments(parser) and run(args) -> int
DELEGATED = {
    "serve": ("diffmesh.server.cli", "start the ComfyUI-compatible server"),
    "doctor": ("diffmesh.devices.cli", "report devices, memory and the settings that fit them"),
    "bench": ("diffmesh.benchmarks.cli", "run benchmarks (JSON output)"),
}
FAMILIES = ("sd1", "sd2", "sd2v", "sdxl", "sd15", "flux", "flux-schnell", "flux-vae",
            "clip_l", "t5xxl", "qwen3_4b", "qwen25_7b", "umt5xxl", "zimage", "qwenimage", "wan21vae", "wan21",
            "wan22vae", "clip_vision_h", "clip_vision_l", "clip_vision_g", "clip_vision_siglip", "redux", "gligen",
            "sd21unclip")


def _error(message: str, code: int = 1) -> int:
    print(f"diffmesh: error: {message}", file=sys.stderr)
    return code


def add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("folders")
    g.add_argument("--base-directory", metavar="DIR", default=None,
                   help="ComfyUI-style base folder holding models/, input/, output/ (default: current folder)")
    g.add_argument("--models-dir", metavar="DIR", default=None, help="models folder (default: BASE/models)")
    g.add_argument("--extra-model-paths-config", metavar="FILE", nargs="+", action="extend", default=None,
                   help="extra_model_paths.yaml files adding model folders")
    g.add_argument("--input-directory", metavar="DIR", default=None, help="input folder (default: BASE/input)")
    g.add_argument("--output-directory", metavar="DIR", default=None, help="output folder (default: BASE/output)")
    g.add_argument("--temp-directory", metavar="DIR", default=None, help="parent of the temp folder")
    g.add_argument("--disable-metadata", action="store_true", help="do not write prompt/workflow into saved PNGs")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", metavar="WORKFLOW.json", help="workflow file, API or UI format")
    add_folder_arguments(parser)
    from diffmesh.config.devices import add_device_arguments
    from diffmesh.engine.options import add_engine_arguments
    from diffmesh.nodes.custom import add_arguments as add_custom_node_arguments

    add_device_arguments(parser)
    add_engine_arguments(parser)
    add_custom_node_arguments(parser)


def build_parser(delegated_modules: dict[str, Any], command: str | None = "run") -> argparse.ArgumentParser:
    """The parser; only `command`'s subparser gets its flags (the others take any arguments), so
    starting one command never imports another's option modules."""
    parser = argparse.ArgumentParser(prog="diffmesh", description="ComfyUI-compatible Stable Diffusion on every device")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", help="run a workflow and save its outputs", add_help=command == "run")
    if command == "run":
        add_run_arguments(run)
    else:
        run.add_argument("rest", nargs=argparse.REMAINDER)
    make = sub.add_parser("make-test-model", help="write a random-weight checkpoint for tests")
    make.add_argument("--family", required=True, choices=FAMILIES)
    make.add_argument("--size", default="tiny", choices=("tiny", "full", "reference"),
                      help="tiny for tests; full (SD) or reference (DiT: the shapes of make_dit_random.py)")
    make.add_argument("--out", required=True, metavar="PATH", help="checkpoint file to write")
    for name, (_, help_text) in DELEGATED.items():
        child = sub.add_parser(name, help=help_text, add_help=name in delegated_modules)
        module = delegated_modules.get(name)
        if module is not None:
            module.add_arguments(child)
        else:
            child.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _load_delegated(argv: list[str]) -> dict[str, Any]:
    """Import only the delegated module the command line asks for (they pull in heavy packages)."""
    modules = {}
    for name, (module_name, _) in DELEGATED.items():
        if name in argv[:1]:
            try:
                modules[name] = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name is None or not module_name.startswith(exc.name):
                    raise
    return modules


# -- run ------------------------------------------------------------------------------------------

def _format_validation(error: dict, node_errors: dict, prompt: dict) -> str:
    lines = [f"{error['message']}" + (f": {error['details']}" if error.get("details") and not node_errors else "")]
    for node_id, entry in node_errors.items():
        for issue in entry["errors"]:
            lines.append(f"  node {node_id} ({entry['class_type']}): {issue['message']}: {issue['details']}")
    return "\n".join(lines)


class ProgressBar:
    """Event sink drawing one tqdm bar per sampler run; remembers which nodes ran."""

    def __init__(self, prompt: dict, stream=None):
        self.prompt = prompt
        self.stream = stream or sys.stderr
        self.bar = None
        self.node = None

    def __call__(self, event: str, data: dict) -> None:
        if event == "executing":
            self._close()
            self.node = data.get("node")
        elif event == "progress":
            from tqdm import tqdm

            if self.bar is None or self.bar.total != data["max"]:
                self._close()
                node = self.prompt.get(str(data.get("node")), {})
                self.bar = tqdm(total=data["max"], file=self.stream, desc=f"{node.get('class_type', '')} #{data.get('node')}",
                                leave=True)
            self.bar.n = data["value"]
            self.bar.refresh()
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _describe_outputs(result, paths) -> list[str]:
    lines = []
    folders = {"output": paths.output_dir, "temp": paths.temp_dir, "input": paths.input_dir}
    for node_id, ui in result.outputs.items():
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    folder = folders.get(item.get("type"), paths.output_dir)
                    lines.append(str(folder / item.get("subfolder", "") / item["filename"]))
    return lines


def run_workflow(args: argparse.Namespace, out=None) -> int:
    from diffmesh.graph.workflow import load_workflow
    from diffmesh.runtime import Runtime

    out = out or sys.stdout
    with Runtime.build(args) as runtime:
        prompt, extra_data = load_workflow(args.workflow, runtime.registry, runtime.executor.env)
        ok, error, outputs, node_errors = runtime.executor.validate(prompt)
        if not ok:
            return _error(_format_validation(error, node_errors, prompt))
        for node_id, entry in node_errors.items():
            print(f"diffmesh: warning: output {', '.join(entry['dependent_outputs'])} skipped: node {node_id} "
                  f"({entry['class_type']}): {entry['errors'][0]['message']}", file=sys.stderr)
        result = runtime.executor.execute(prompt, "cli", extra_data, ProgressBar(prompt), threading.Event(),
                                          outputs_to_execute=outputs)
        if result.status != "success":
            err = result.error or {}
            return _error(f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                          f"{err.get('exception_message', result.status)}")
        for line in _describe_outputs(result, runtime.paths):
            print(f"saved {line}", file=out)
    return 0


def make_test_model(args: argparse.Namespace) -> int:
    from diffmesh.models.testmodels import make_test_model as make

    path = make(args.family, args.size, args.out)
    print(f"wrote {path}")
    return 0


def _dispatch(args: argparse.Namespace, modules: dict[str, Any]) -> int:
    if args.command == "run":
        return run_workflow(args)
    if args.command == "make-test-model":
        return make_test_model(args)
    module = modules.get(args.command)
    if module is None:
        module_name = DELEGATED[args.command][0]
        return _error(f"'diffmesh {args.command}' is not available: module {module_name} is not installed "
                      "in this build")
    return int(module.run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = _load_delegated(argv)
    parser = build_parser(modules, argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return _dispatch(args, modules)
    except ConfigError as exc:
        return _error(str(exc), 2)
    except DiffmeshError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return _error("interrupted", 130)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""Engine flags and the one function the composition root calls to build executor + engine.

`add_engine_arguments(parser)` adds `--executor` and `--parallel`; `build_engine(ns, specs)`
starts the executor (multiproc when there is more than one worker, unless `--executor` says
otherwise) and returns `(executor, engine)`. Nothing starts before `build_engine` is called.
"""

from __future__ import annotations

import argparse
from typing import Any

from diffmesh.engine.planner import MODES
from diffmesh.executors import BACKENDS

PARALLEL_HELP = ("how several devices share work: auto (planner decides per job and per queue), none (one device "
                 "per job; placement only), batch (split batches), cfg (cond/uncond on two devices), queue "
                 "(one prompt per device), sequence (a transformer's image tokens split over the devices), patch (an SD "
                 "UNet's and the VAE's latent rows split in bands over the devices, exact), shard (1/N of every "
                 "block's weights on each device, gathered per block), layersplit (blocks divided among the "
                 "devices); auto also picks shard or layersplit when a model does not fit one device's --vram-budget)")
SEQUENCE_ATTENTION_HELP = ("attention exchange of sequence parallel: auto (Ulysses all-to-all when the model has at "
                           "least as many heads as devices, else ring), ulysses, ring")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parallelism")
    group.add_argument("--executor", choices=sorted(BACKENDS), default=None,
                       help="worker backend (default: inproc for one worker, multiproc for several; ray: Ray actors, "
                            "needs the `ray` extra)")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="with --executor ray: join this Ray cluster (host:port of `ray start --head`); "
                            "default: start a local Ray instance")
    group.add_argument("--parallel", choices=MODES, default="auto", help=PARALLEL_HELP)
    group.add_argument("--sequence-attention", choices=("auto", "ulysses", "ring"), default="auto",
                       help=SEQUENCE_ATTENTION_HELP)
    group.add_argument("--explain", action="store_true",
                       help="print the planner's choice and the cost model's predicted step time and memory of "
                            "every strategy (a table on stderr) for each sampling job")


def executor_name(ns: argparse.Namespace, specs: list) -> str:
    return getattr(ns, "executor", None) or ("multiproc" if len(specs) > 1 else "inproc")


def build_engine(ns: argparse.Namespace, specs: list, **engine_options: Any):
    """Start the executor for `specs` and wrap it in an `Engine`; returns (executor, engine)."""
    from diffmesh.engine.engine import Engine
    from diffmesh.executors import make_executor

    name = executor_name(ns, specs)
    options = {"address": getattr(ns, "ray_address", None)} if name == "ray" else {}
    backend = make_executor(name, specs, **options)
    backend.start()
    try:
        engine_options.setdefault("sequence_attention", getattr(ns, "sequence_attention", None) or "auto")
        if getattr(ns, "explain", False):
            engine_options.setdefault("explain", _explain_to_stderr)
        engine = Engine(backend, parallel=getattr(ns, "parallel", None) or "auto", **engine_options)
        if needs_calibration(specs):
            engine.calibrate()
    except BaseException:
        backend.shutdown()
        raise
    return backend, engine


def _explain_to_stderr(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def needs_calibration(specs: list) -> bool:
    """Measure relative speeds only when workers may differ: accelerators, or unequal CPU budgets.
    Identical CPU workers stay at 1.0 each, so noise in a short measurement cannot skew splits."""
    if len(specs) < 2:
        return False
    accelerators = any(not s.device.startswith("cpu") for s in specs)
    return accelerators or len({(s.device, s.threads) for s in specs}) > 1

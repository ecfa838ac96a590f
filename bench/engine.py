"""Engine benchmark: the reference workflow (full-size random SD1.5, euler, 4 steps, cfg 7) run
through the real runtime (`Runtime.build` + `PromptExecutor.execute`, as `diffmesh run` does) at
256x256 and 512x512. Reports per-step sampling time, whole-workflow wall time cold (first run in
a fresh process, model load included) and warm (second run in the same process; the seed changes
so sampling and VAE decode run again, the text encodings stay cached) and the peak RSS of the
process. Each size runs in its own subprocess, so peak RSS is per size.

    python bench/engine.py                         # 2 torch threads, fp32, sizes 256 and 512
    python bench/engine.py --threads 1 --sizes 256 --out bench/results/engine-1thread.json
    python bench/engine.py --label bf16 -- --bf16-unet   # flags after `--` go to the runtime

Output: one JSON document on stdout and in bench/results/engine.json (or --out). Figures and the
comparison with ComfyUI 0.8.0 are in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = Path("/work/shared/reference/sd15_256_euler/workflow.json")
CHECKPOINT = "sd15-random.safetensors"
CACHED_CHECKPOINT = REPO / ".cache" / CHECKPOINT
SAMPLER_NODE = "3"
LATENT_NODE = "5"
GIB = 1024 ** 3


# -- machine facts --------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    import torch

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) * 1024 / GIB, 1)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "mem_total_gib": mem,
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": cpu_bf16()}


def cpu_bf16() -> list[str]:
    """The CPU's bfloat16 instruction sets (bf16 UNet weights are only fast with these)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f in ("avx512_bf16", "amx_bf16"))
    except OSError:
        pass
    return []


# -- checkpoint -----------------------------------------------------------------------------------

def prepare_base(base: Path) -> Path:
    """base/models/checkpoints/sd15-random.safetensors: a hard link to the cached checkpoint, or a
    fresh one from `diffmesh make-test-model` when there is none."""
    target = base / "models" / "checkpoints" / CHECKPOINT
    if target.exists():
        return base
    target.parent.mkdir(parents=True, exist_ok=True)
    if CACHED_CHECKPOINT.exists():
        try:
            os.link(CACHED_CHECKPOINT, target)
            return base
        except OSError:
            pass
    from diffmesh.cli import main as cli_main

    code = cli_main(["make-test-model", "--family", "sd15", "--size", "full", "--out", str(target)])
    if code != 0:
        raise SystemExit(f"could not write {target}")
    return base


# -- child: one size in a fresh process -----------------------------------------------------------

class Recorder:
    """Event sink keeping (time, event, node, value) for the timings."""

    def __init__(self):
        self.events: list[tuple[float, str, str | None, int | None]] = []

    def __call__(self, event: str, data: dict) -> None:
        node = data.get("node")
        self.events.append((time.perf_counter(), event, None if node is None else str(node),
                            data.get("value") if event == "progress" else None))

    def node_times(self, prompt: dict, end: float) -> dict[str, float]:
        """Seconds per executed node, from consecutive `executing` events."""
        starts = [(t, node) for t, e, node, _ in self.events if e == "executing"]
        out = {}
        for (t0, node), (t1, _) in zip(starts, starts[1:] + [(end, None)]):
            if node is not None:
                out[f"{node} {prompt[node]['class_type']}"] = round(t1 - t0, 3)
        return out

    def step_times(self) -> list[float]:
        """Seconds per sampler step: step 1 counts from the start of the KSampler node (so it holds
        the UNet load on a cold run); later steps are the gaps between progress events."""
        start = next((t for t, e, node, _ in self.events if e == "executing" and node == SAMPLER_NODE), None)
        ticks = [t for t, e, node, _ in self.events if e == "progress" and node == SAMPLER_NODE]
        if start is None or not ticks:
            return []
        return [round(b - a, 3) for a, b in zip([start] + ticks[:-1], ticks)]


def rss_now_gib() -> dict[str, float]:
    """Current RSS split as Linux reports it: anonymous (tensors we own) and file-backed (pages of
    the memory-mapped checkpoint: clean, shared with the page cache, reclaimable)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = round(int(line.split()[1]) * 1024 / GIB, 3)
    except OSError:
        pass
    return out


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)   # KiB on Linux


def child(args: argparse.Namespace, runtime_flags: list[str]) -> dict:
    t_process = time.perf_counter()
    import threading

    import torch

    torch.set_num_threads(args.threads)
    from diffmesh.cli import build_parser
    from diffmesh.graph.workflow import load_workflow
    from diffmesh.runtime import Runtime

    argv = ["run", str(args.workflow), "--base-directory", str(args.base), "--cpu",
            "--threads-per-worker", str(args.threads), *runtime_flags]
    ns = build_parser({}).parse_args(argv)
    t_import = time.perf_counter() - t_process
    t0 = time.perf_counter()
    runtime = Runtime.build(ns)
    t_build = time.perf_counter() - t0
    runs = []
    try:
        prompt, extra_data = load_workflow(str(args.workflow), runtime.registry, runtime.executor.env)
        prompt[LATENT_NODE]["inputs"]["width"] = args.size
        prompt[LATENT_NODE]["inputs"]["height"] = args.size
        for i, label in enumerate(("cold", "warm")):
            prompt[SAMPLER_NODE]["inputs"]["seed"] = 42 + i       # new seed: sampling + decode run again
            recorder = Recorder()
            load_before = loadavg()
            t0 = time.perf_counter()
            result = runtime.executor.execute(prompt, f"bench-{label}", extra_data, recorder, threading.Event())
            end = time.perf_counter()
            if result.status != "success":
                raise SystemExit(f"{label} run failed: {result.status} {result.error}")
            steps = recorder.step_times()
            runs.append({"run": label, "seed": 42 + i, "wall_s": round(end - t0, 3), "step_s": steps,
                         "nodes_s": recorder.node_times(prompt, end),
                         "rss_after_gib": rss_now_gib(), "peak_rss_so_far_gib": peak_rss_gib(),
                         "loadavg_before": load_before, "loadavg_after": loadavg()})
        info = runtime.backend.call(0, "ping").result() if hasattr(runtime.backend, "call") else {}
    finally:
        runtime.close()
    warm = runs[1]
    later_steps = warm["step_s"][1:] or warm["step_s"]
    return {"size": args.size, "threads": args.threads, "torch_threads": torch.get_num_threads(),
            "worker": info, "runtime_flags": runtime_flags,
            "import_s": round(t_import, 3), "runtime_build_s": round(t_build, 3),
            "cold_wall_s": runs[0]["wall_s"], "warm_wall_s": warm["wall_s"],
            "step_s_warm_median": round(statistics.median(later_steps), 3),
            "step_s_warm_mean": round(statistics.mean(warm["step_s"]), 3),
            "peak_rss_gib": peak_rss_gib(), "runs": runs}


# -- parent: one subprocess per size --------------------------------------------------------------

def _cpu_busy_s() -> float:
    """Seconds of CPU time the whole machine has spent busy (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]                                    # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of process `pid` and its reaped children (utime, stime, cutime, cstime)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in parts[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_size(size: int, args: argparse.Namespace, runtime_flags: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--threads", str(args.threads),
           "--base", str(args.base), "--workflow", str(args.workflow), "--", *runtime_flags]
    t0, busy0 = time.perf_counter(), _cpu_busy_s()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    ours = 0.0
    while proc.poll() is None:                    # sample the child's CPU time until it exits
        ours = max(ours, _tree_cpu_s(proc.pid))
        time.sleep(0.5)
    stdout = proc.stdout.read()
    wall, busy = time.perf_counter() - t0, _cpu_busy_s() - busy0
    if proc.returncode != 0:
        raise SystemExit(f"size {size}: child exited {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(wall, 3)
    # other work on the machine while this size ran, in cores (0 = quiet, 1 = one core busy elsewhere)
    result["other_load_cores"] = round(max(0.0, busy - ours) / wall, 2)
    result["own_cpu_cores"] = round(ours / wall, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    runtime_flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, runtime_flags = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512", help="comma-separated square sizes (default 256,512)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the reference)")
    parser.add_argument("--base", type=Path, default=REPO / ".cache" / "bench-engine",
                        help="base folder; models/checkpoints/sd15-random.safetensors is linked or made there")
    parser.add_argument("--workflow", type=Path, default=WORKFLOW)
    parser.add_argument("--label", default=None, help="free text stored in the JSON (e.g. bf16)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "engine.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args, runtime_flags)), flush=True)
        return 0

    prepare_base(args.base)
    report = {"benchmark": "engine", "workflow": str(args.workflow), "label": args.label,
              "command": " ".join([Path(sys.executable).name, "bench/engine.py", *sys.argv[1:]]),
              "threads": args.threads, "runtime_flags": runtime_flags, "machine": machine(),
              "loadavg_start": loadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        print(f"engine bench: {size}x{size}, {args.threads} threads ...", file=sys.stderr, flush=True)
        report["sizes"][str(size)] = run_size(size, args, runtime_flags)
    report["loadavg_end"] = loadavg()
    report["comfyui_0_8_0"] = {"256": {"warm_wall_s": 13.4, "step_s": 2.5},
                               "512": {"warm_wall_s": 53.5, "step_s": 10.7, "peak_rss_gib": 7.3}}
    text = json.dumps(report, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark scenarios. Each takes a started `Setup` and a `Workload` and returns plain data.

- latency: one image (batch 1): whole-prompt time and sampling time per step, with a strategy
  (single worker, or CFG parallel over two).
- batch:   one job of `batch` images: sampling time and images per second (batch parallel).
- queue:   `prompts` prompts sent by `clients` client threads; each prompt takes a lease (one
  worker) as the server's dispatcher does; prompts per minute.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from diffmesh.benchmarks.harness import Setup, StepClock, Workload, make_job, run_prompt
from diffmesh.engine.engine import Engine


def latency(setup: Setup, work: Workload, strategy: str, repeats: int = 1) -> dict[str, Any]:
    engine = Engine(setup.executor, parallel=strategy)
    runs = [run_prompt(engine, work, seed=100 + i) for i in range(repeats)]
    best = min(runs, key=lambda r: r["total_s"])
    plan = engine.last_plan.as_dict() if engine.last_plan else None
    return {"strategy": plan["strategy"] if plan else strategy, "plan": plan, "runs": runs,
            "total_s": best["total_s"], "sample_s": best["sample_s"], "step_s": best["step_s"]}


def batch(setup: Setup, work: Workload, size: int, strategy: str) -> dict[str, Any]:
    engine = Engine(setup.executor, parallel=strategy)
    job = make_job(engine, work, size, seed=200)
    clock = StepClock()
    start = time.perf_counter()
    engine.sample(work.handles()["unet"], job, clock)
    elapsed = time.perf_counter() - start
    return {"strategy": engine.last_plan.strategy, "plan": engine.last_plan.as_dict(), "batch": size,
            "sample_s": elapsed, "step_s": clock.per_step(), "images_per_s": size / elapsed}


def queue(setup: Setup, work: Workload, prompts: int, clients: int) -> dict[str, Any]:
    engine = Engine(setup.executor, parallel="queue")
    counter = itertools.count()
    done: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        while True:
            with lock:
                n = next(counter)
            if n >= prompts:
                return
            lease = engine.acquire(pending=2)
            try:
                with lease:
                    timing = run_prompt(lease.engine, work, seed=300 + n)
                with lock:
                    done.append({"prompt": n, "client": index, "workers": lease.worker_ids, **timing})
            except BaseException as exc:  # noqa: BLE001 - reported in the result
                errors.append(exc)
                return

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"prompts": prompts, "clients": clients, "wall_s": wall, "prompts_per_min": 60.0 * prompts / wall,
            "per_prompt": sorted(done, key=lambda d: d["prompt"])}

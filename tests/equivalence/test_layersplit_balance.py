"""Balancing the stages of layer split (`parallel.stages`, `LayerSplit._rebalance`): after a pipelined
call the members gather the block times they measured and move blocks so that each worker runs one
contiguous range of the run order, the slowest stage as fast as the rooms allow. Two workers with
unequal free memory get a first split (bytes in proportion to free memory, module order) whose stage
times are far apart; after balancing no worker is visited twice by a micro-batch, the predicted call
is faster, the latent is still one device's and no worker's accounted memory ever passed its budget.
A second job keeps the balanced parts; a member whose part was unloaded re-places and takes rank 0's
owners (and the count of pipelined calls that names the messages)."""

from __future__ import annotations

import pytest

from same import assert_same

from diffmesh.engine.engine import Engine
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.parallel.stages import balanced_owners, chain, pipeline_seconds

from test_shard_equivalence import _unet_bytes

# unequal room: worker 1 reports 2.5x worker 0's free memory, so the first split (bytes in proportion
# to free memory) leaves worker 0 the first ~30% of the weights; both could hold the whole model
BUDGETS = (1.6, 4.0)


@pytest.fixture(scope="module")
def roomy_workers(sd1):
    size = _unet_bytes(sd1["unet"])
    budgets = [int(size * f) for f in BUDGETS]
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1, settings={"vram_budget": b})
                                     for i, b in enumerate(budgets)], start_timeout=120)
    executor.start()
    yield executor, budgets
    executor.shutdown(timeout=5)


def _parts(executor) -> list[tuple[dict, dict]]:
    """(memory stats, layer-split layout stats) of each worker."""
    out = []
    for worker in range(2):
        stats = executor.call(worker, "memory_stats").result()
        out.append((stats, next(c["layout"] for c in stats["components"] if "layout" in c)))
    return out


def _visits(balance: dict) -> list[int]:
    return [worker for worker, _ in balance["stages"]]


def test_balanced_layout_runs_each_worker_once_and_stays_exact(roomy_workers, reference_engine, sd1, make_job):
    executor, budgets = roomy_workers
    job = make_job(batch=2, cfg=1.0, steps=3, size=128)
    engine = Engine(executor, parallel="layersplit")
    assert_same(engine.sample(sd1["unet"], job), reference_engine.sample(sd1["unet"], job))
    parts = _parts(executor)
    for (stats, layout), budget in zip(parts, budgets):
        balance = layout["pipeline"]["balance"]
        assert balance["moves"] >= 1, balance
        assert len(set(_visits(balance))) == len(_visits(balance)), balance     # no worker visited twice
        assert balance["after_call_s"] < balance["before_call_s"]
        assert stats["peak"] <= budget                     # moves drop blocks before taking new ones
    assert parts[0][1]["blocks_per_rank"] == parts[1][1]["blocks_per_rank"]
    moves = parts[0][1]["pipeline"]["balance"]["moves"]

    # a second job: the same placed parts (the engine's shares changed, the key did not); its calls
    # may move blocks again where the new times predict 5% more, always on both members alike
    assert_same(engine.sample(sd1["unet"], job), reference_engine.sample(sd1["unet"], job))
    again = _parts(executor)
    assert sum(len(stats["components"]) for stats, _ in again) == 2
    assert again[0][1]["pipeline"]["balance"]["moves"] >= moves
    assert again[0][1]["blocks_per_rank"] == again[1][1]["blocks_per_rank"]
    assert again[0][1]["pipeline"]["pipelined_calls"] == 2 * 3         # one part, every call of both jobs

    # worker 1's part unloaded: it re-places by bytes, finds it disagrees and takes rank 0's owners
    executor.call(1, "free").result()
    assert_same(engine.sample(sd1["unet"], job), reference_engine.sample(sd1["unet"], job))
    last = _parts(executor)
    assert last[1][1]["blocks_per_rank"] == last[0][1]["blocks_per_rank"]
    assert all(stats["peak"] <= budget for (stats, _), budget in zip(last, budgets))


def test_balanced_owners_minimise_the_slowest_stage_within_the_rooms():
    # run order differs from index order (a UNet's mid block is registered last)
    order, times, sizes = [0, 1, 3, 2], [1.0, 1.0, 6.0, 2.0], [10, 10, 10, 10]
    owners = balanced_owners(order, times, sizes, [40, 40])
    assert owners == [0, 0, 1, 0]                         # 0: blocks 0, 1, 3 (4 s); 1: block 2 (6 s)
    assert balanced_owners(order, times, sizes, [20, 40]) == [0, 0, 1, 1]   # room decides
    assert balanced_owners(order, times, sizes, [10, 10]) is None


def test_a_revisited_worker_is_predicted_as_slow_as_it_runs():
    """The schedule the pipeline follows (lowest ready micro-batch first, a stage to its end): the
    byte split of full-size SD1.5 at 512^2 (worker 0: down blocks, 1: mid, 0: up_blocks.0, 1: the
    rest; seconds per row measured on one CPU thread) takes as long as serial, which is what the
    benchmark measured before balancing; the balanced split takes sum + max."""
    revisit = [(0, 6.1), (1, 0.51), (0, 1.19), (1, 9.77)]
    assert pipeline_seconds(revisit, 2) == pytest.approx(32.93)      # serial: 2 x 17.57 = 35.1
    assert pipeline_seconds([(0, 7.16), (1, 9.77)], 2) == pytest.approx(7.16 + 2 * 9.77)
    assert pipeline_seconds([(0, 5.0), (1, 5.0)], 4) == pytest.approx(25.0)
    assert chain([2, 0, 1], [1.0, 2.0, 3.0], [0, 0, 1]) == [(1, 3.0), (0, 3.0)]

"""When the planner takes batch x patch (a batch split over groups of workers, each group patch-splitting
its rows) or CFG x patch, and when it does not; the plan names its groups and `--explain` names it."""

from __future__ import annotations

import torch

from diffmesh.engine.placement import WorkerInfo, worker_labels
from diffmesh.engine.planner import MIN_PATCH_ROWS, Workload, plan_sample


def cpu_workers(n: int, speeds: list[float] | None = None) -> list[WorkerInfo]:
    labels = worker_labels(["cpu"] * n)
    return [WorkerInfo(i, "cpu", labels[i], (speeds or [1.0] * n)[i]) for i in range(n)]


def sd(batch: int, cfg: float = 1.0, rows: int = 2 * MIN_PATCH_ROWS, **extra) -> Workload:
    """An SD1 job: `rows` latent rows in units of 8 (MIN_PATCH_ROWS each band in auto)."""
    return Workload(batch=batch, cfg=cfg, patch_rows=rows, patch_align=8, **extra)


def test_a_batch_of_two_on_four_workers_runs_as_two_patch_pairs():
    plan = plan_sample(sd(2), cpu_workers(4))
    assert plan.strategy == "batch_patch"
    assert plan.batch_groups() == [((0, 1), (0, 1)), ((1, 2), (2, 3))]
    assert "2 groups of 2 + 2 workers" in plan.reason
    assert plan_sample(sd(2, cfg=7.0), cpu_workers(4)).strategy == "batch_patch"     # cond+uncond in each band


def test_each_band_keeps_min_patch_rows_so_extra_workers_stay_idle():
    """8 workers, batch 2, 64 latent rows: two bands of 32 per image, so two pairs and 4 workers idle;
    at 128 rows two groups of 4."""
    plan = plan_sample(sd(2), cpu_workers(8))
    assert plan.batch_groups() == [((0, 1), (0, 1)), ((1, 2), (2, 3))]
    plan = plan_sample(sd(2, rows=4 * MIN_PATCH_ROWS), cpu_workers(8))
    assert plan.batch_groups() == [((0, 1), (0, 1, 2, 3)), ((1, 2), (4, 5, 6, 7))]


def test_batch_split_alone_wins_where_it_keeps_every_worker_busy_or_bands_would_be_small():
    assert plan_sample(sd(4), cpu_workers(4)).strategy == "batch"                      # one image each, no halos
    assert plan_sample(sd(2, rows=MIN_PATCH_ROWS), cpu_workers(4)).strategy == "batch"  # one band per image
    assert plan_sample(sd(2), cpu_workers(2)).strategy == "batch"                      # no worker idle
    assert plan_sample(sd(2), cpu_workers(3)).strategy == "batch"                      # a pair + one alone: no gain
    assert plan_sample(Workload(batch=2, cfg=1.0), cpu_workers(4)).strategy == "batch"  # not a UNet


def test_a_batch_coupled_sampler_keeps_its_batch_whole():
    """dpm_adaptive chooses its steps over the whole batch: patch-split it, never cut it."""
    plan = plan_sample(sd(2, batch_coupled=True), cpu_workers(4))
    assert plan.strategy == "patch" and plan.workers == (0, 1)


def test_unequal_speeds_put_a_fast_worker_alone_and_pool_the_slow_ones():
    plan = plan_sample(sd(2), cpu_workers(3, [2.0, 1.0, 1.0]))
    assert plan.strategy == "batch_patch"
    assert plan.batch_groups() == [((0, 1), (0,)), ((1, 2), (1, 2))]
    plan = plan_sample(sd(3), cpu_workers(4, [2.0, 2.0, 1.0, 1.0]))
    assert plan.batch_groups() == [((0, 2), (0, 1)), ((2, 3), (2, 3))]


def test_patch_mode_chooses_between_one_band_set_and_groups_but_batch_mode_never_patches():
    """--parallel patch with 24 latent rows (3 bands of 8 at most): batch 2 on 4 workers -> two pairs;
    batch 2 on 3 workers -> one image in 3 bands each step is cheaper than a pair and a lone worker."""
    assert plan_sample(sd(2, rows=24), cpu_workers(4), "patch").strategy == "batch_patch"
    plan = plan_sample(sd(2, rows=24), cpu_workers(3), "patch")
    assert plan.strategy == "patch" and len(plan.workers) == 3
    assert plan_sample(sd(2, rows=24), cpu_workers(4), "batch").strategy == "batch"
    assert plan_sample(sd(2, rows=24), cpu_workers(4), "none").strategy == "single"


def test_cfg_times_patch_for_one_image_on_four_workers():
    plan = plan_sample(sd(1, cfg=7.0), cpu_workers(4))
    assert plan.strategy == "cfg_patch" and plan.workers == (0, 1, 2, 3)
    assert "cond and uncond on 2 workers each" in plan.reason
    assert plan_sample(sd(1, cfg=7.0), cpu_workers(2)).strategy == "cfg"       # no pair to split
    assert plan_sample(sd(1, cfg=1.0), cpu_workers(4)).strategy == "patch"     # no uncond pass


def test_explain_names_the_batch_patch_plan(tiny_models):
    """`--explain` on a 4-worker engine: the line says batch_patch and its groups (planning only)."""
    from diffmesh.engine.engine import Engine
    from diffmesh.executors.base import WorkerSpec
    from diffmesh.executors.inproc import InProcessExecutor
    from diffmesh.models.handle import ModelHandle
    from diffmesh.sampling.job import SampleJob

    lines: list[str] = []
    executor = InProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(4)])
    engine = Engine(executor, parallel="auto", explain=lines.append)
    latent = torch.zeros(2, 4, 64, 8)
    cond = [[torch.zeros(1, 77, 32), {}]]
    job = SampleJob(latent=latent, noise=torch.zeros_like(latent), sigmas=torch.tensor([1.0, 0.0]),
                    sampler_name="euler", cfg=1.0, positive=cond, negative=cond, seed=0)
    plan = engine.plan(ModelHandle(tiny_models["sd1"], "unet", "sd1"), job)
    assert plan.strategy == "batch_patch"
    assert "batch_patch - batch of 2 split over 2 groups of 2 + 2 workers" in lines[0]

"""Sequence-parallel pieces without worker processes: token splits, the ring's log-sum-exp merge,
the attention exchange over a real gloo group between threads, and the planner's choices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from group_threads import run_group

from diffmesh.engine.placement import WorkerInfo
from diffmesh.engine.planner import MIN_SEQUENCE_TOKENS, Workload, plan_sample
from diffmesh.parallel.sequence import SequenceShard, merge_partials, split_sizes, _partial_attention


def test_split_sizes_are_contiguous_and_as_even_as_possible():
    assert split_sizes(4096, 3) == [1366, 1365, 1365]
    assert split_sizes(35, 2) == [18, 17]
    assert split_sizes(24, 5) == [5, 5, 5, 5, 4]


def test_ring_merge_of_key_blocks_equals_attention_over_all_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 16, generator=g) for _ in range(3))
    blocks = [(0, 2), (2, 6), (6, 9)]
    merged = merge_partials([_partial_attention(q, k[:, :, a:b], v[:, :, a:b]) for a, b in blocks])
    expected = F.scaled_dot_product_attention(q, k, v)
    assert (merged - expected).abs().max().item() < 1e-6


@pytest.mark.parametrize("world,mode,heads", [(2, "ulysses", 4), (3, "ulysses", 5), (3, "ring", 2), (2, "ring", 3)])
def test_joint_attention_over_split_image_rows_equals_whole_sequence(world, mode, heads):
    """Text rows (replicated) + image rows split unevenly: every worker gets the text rows and
    its image rows of the attention over the whole sequence, and the same text rows as the others."""
    g = torch.Generator().manual_seed(1)
    text, image = 4, 13
    q, k, v = (torch.randn(2, heads, text + image, 8, generator=g) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)

    def member(rank, group):
        shard = SequenceShard(group, rank, world, mode)
        local = [torch.cat((t[:, :, :text], shard.split(t[:, :, text:], dim=2)), dim=2) for t in (q, k, v)]
        out = shard.attend(*local, replicated=text)
        return out[:, :, :text], shard.gather(out[:, :, text:], dim=2)

    results = run_group(world, member)
    for text_rows, image_rows in results:
        assert torch.equal(text_rows, results[0][0])
        assert (text_rows - expected[:, :, :text]).abs().max().item() < 1e-5
        assert (image_rows - expected[:, :, text:]).abs().max().item() < 1e-5


def test_too_few_tokens_for_the_workers_says_so():
    def member(rank, group):
        with pytest.raises(ValueError, match="2 image tokens cannot be split over 3 workers"):
            SequenceShard(group, rank, 3).split(torch.zeros(1, 2, 4))
        return True
    assert all(run_group(3, member))


def _workers(n: int) -> list[WorkerInfo]:
    return [WorkerInfo(i, "cpu", f"cpu:{i}", 1.0) for i in range(n)]


def test_planner_picks_sequence_for_one_large_transformer_image_at_cfg_one():
    plan = plan_sample(Workload(batch=1, cfg=1.0, tokens=4096), _workers(2))
    assert plan.strategy == "sequence" and plan.workers == (0, 1)


def test_planner_prefers_cfg_and_batch_split_where_they_apply():
    """They exchange once per step instead of in every block."""
    assert plan_sample(Workload(batch=1, cfg=3.5, tokens=4096), _workers(2)).strategy == "cfg"
    assert plan_sample(Workload(batch=2, cfg=1.0, tokens=4096), _workers(2)).strategy == "batch"


def test_planner_keeps_small_images_and_unets_on_one_device():
    small = Workload(batch=1, cfg=1.0, tokens=2 * MIN_SEQUENCE_TOKENS - 1)
    assert plan_sample(small, _workers(2)).strategy == "single"
    assert plan_sample(Workload(batch=1, cfg=1.0, tokens=0), _workers(2)).strategy == "single"
    assert len(plan_sample(Workload(1, 1.0, tokens=2 * MIN_SEQUENCE_TOKENS), _workers(4)).workers) == 2


def test_sequence_mode_asked_for_a_unet_falls_back_with_the_reason():
    plan = plan_sample(Workload(batch=1, cfg=1.0), _workers(2), "sequence")
    assert plan.strategy == "single" and "not a diffusion transformer" in plan.reason
    forced = plan_sample(Workload(batch=1, cfg=1.0, tokens=35), _workers(3), "sequence")
    assert forced.strategy == "sequence" and forced.workers == (0, 1, 2)


def test_planner_takes_cfg_times_sequence_on_four_workers_and_more_exchange_costs_more():
    """With cfg on 4 workers, two sequence pairs (one CFG exchange per step) beat one 4-way sequence
    group (exchanges with 3 peers in every block); with 2 workers CFG split alone stays best."""
    hybrid = plan_sample(Workload(batch=1, cfg=4.0, tokens=4096), _workers(4))
    assert hybrid.strategy == "cfg_sequence" and hybrid.workers == (0, 1, 2, 3)
    assert plan_sample(Workload(batch=1, cfg=4.0, tokens=4096), _workers(2)).strategy == "cfg"
    assert plan_sample(Workload(batch=1, cfg=1.0, tokens=4096), _workers(4)).strategy == "sequence"

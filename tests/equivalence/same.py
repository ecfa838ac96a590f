"""The equivalence tests' one comparison: the same numbers up to float reordering (rows, bands, heads
or blocks computed in other call shapes or on other workers)."""

from __future__ import annotations

import torch


def assert_same(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    """Relative L2 difference below `tolerance` (1e-5: the issues' bound; the reference README's
    faithful re-implementation bound is 1e-3), shapes equal; the difference is printed."""
    assert actual.shape == expected.shape
    relative = ((actual - expected).norm() / expected.norm()).item()
    print(f"relative L2 difference {relative:.2e}")
    assert relative < tolerance, f"relative L2 difference {relative:.2e}"

"""The GPU benchmark's micro-batch search (``scripts/bench_gpu.py: largest_fitting``), on real predicates."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.test_train_helpers import REPO

spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "scripts" / "bench_gpu.py")
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)


def _search(limit: int, cap: int) -> tuple[int, list[int]]:
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        return b <= limit

    return bench_gpu.largest_fitting(fits, cap), probes


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 5, 8, 37, 64, 100, 255, 256, 1000])
@pytest.mark.parametrize("cap", [1, 6, 64, 256])
def test_finds_the_largest_batch_that_fits_within_the_cap(limit, cap):
    best, probes = _search(limit, cap)
    assert best == min(limit, cap)
    assert all(1 <= b <= cap for b in probes)
    assert len(probes) == len(set(probes))  # no size is probed twice
    assert len(probes) <= 2 * cap.bit_length() + 1  # doubling + bisection, not a linear scan


def test_nothing_fits():
    assert _search(0, 256) == (0, [1])


def test_a_failed_allocation_counts_as_out_of_memory_and_nothing_else_does():
    with pytest.raises(RuntimeError) as alloc:
        torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure of the CPU allocator
    assert bench_gpu.is_oom(alloc.value)
    with pytest.raises(RuntimeError) as shape:
        torch.ones(2, 3) @ torch.ones(2, 3)  # a real bug must not be mistaken for "does not fit"
    assert not bench_gpu.is_oom(shape.value)

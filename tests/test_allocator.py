"""The allocator settings of the optimisation loop (bidsrecon/recon/allocator.py)."""
import multiprocessing

import numpy as np
import psutil
import pytest

from bidsrecon.recon import allocator
from bidsrecon.recon.allocator import freed_memory_kept

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")

MB = 2**20


def _resident():
    return psutil.Process().memory_info().rss


def _in_a_fresh_process(check):
    """Run ``check`` in a new interpreter. The resident size and malloc's heap depend on what ran
    before in this one: a large free chunk that an earlier test left inside the heap serves a 96-MB
    block without mmap, and then it is neither faulted in anew nor given back."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(check)


def _allocate_and_free(megabytes):
    block = np.ones(megabytes * MB // 8)  # written, so resident; above glibc's mmap threshold
    del block


def test_freed_blocks_stay_for_reuse_inside_and_go_back_after():
    _in_a_fresh_process(_freed_blocks_stay_for_reuse_inside_and_go_back_after)


def _freed_blocks_stay_for_reuse_inside_and_go_back_after():
    with freed_memory_kept():
        start = _resident()
        _allocate_and_free(96)
        kept = _resident() - start
        _allocate_and_free(96)  # reuses the kept block: nothing new is faulted in
        reused = _resident() - start
    returned = _resident() - start
    assert kept > 80 * MB
    assert reused < kept + 16 * MB
    assert returned < 16 * MB


def test_without_it_a_large_freed_block_goes_back_at_once():
    _in_a_fresh_process(_without_it_a_large_freed_block_goes_back_at_once)


def _without_it_a_large_freed_block_goes_back_at_once():
    start = _resident()
    _allocate_and_free(96)
    assert _resident() - start < 16 * MB


def test_nested_blocks_keep_the_settings_until_the_outermost_ends():
    _in_a_fresh_process(_nested_blocks_keep_the_settings_until_the_outermost_ends)


def _nested_blocks_keep_the_settings_until_the_outermost_ends():
    with freed_memory_kept():
        with freed_memory_kept():
            pass
        start = _resident()
        _allocate_and_free(96)
        assert _resident() - start > 80 * MB
    assert allocator._depth == 0

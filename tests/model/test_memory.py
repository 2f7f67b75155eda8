"""The heap settings that keep freed memory for reuse while a model trains (``train/_memory.py``)."""

import resource

import lightning.pytorch as pl
import pytest
import torch

from unitednet.train import _memory
from unitednet.train._memory import reuse_freed_memory

# above the 32 MiB up to which glibc's default rule may serve a block from the heap, and above the 64 MiB of free
# heap it may keep (so the result does not depend on what the process did before)
BLOCK_MB = 96
PAGES = BLOCK_MB * 1024 * 1024 // 4096

needs_glibc = pytest.mark.skipif(_memory._glibc() is None, reason="the heap settings apply to glibc on Linux only")


def _page_faults(n_blocks: int = 8) -> int:
    """Minor page faults while allocating, touching and freeing ``n_blocks`` tensors of ``BLOCK_MB``, one at a time."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n_blocks):
        block = torch.empty(BLOCK_MB * 1024 * 1024 // 4, dtype=torch.float32)
        block.fill_(1.0)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _resident_pages() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])


@pytest.fixture
def no_user_settings(monkeypatch):
    for key in _memory._USER_SETTINGS:
        monkeypatch.delenv(key, raising=False)


@needs_glibc
def test_freed_blocks_are_reused_inside_and_released_after(no_user_settings):
    outside = _page_faults()
    # every block is mapped afresh and faulted in page by page
    assert outside > 6 * PAGES
    with reuse_freed_memory() as applied:
        assert applied
        # the heap grows by a block or a few (small objects made between two blocks may sit where the last one was)
        _page_faults(4)
        inside = _page_faults()
        retained = _resident_pages()
    # then the blocks reuse the heap's memory: fewer faults over 8 blocks than one fresh block takes
    assert inside < PAGES
    # on exit the heap is trimmed: the memory kept for reuse goes back to the system
    assert retained - _resident_pages() > PAGES // 2


@needs_glibc
def test_nested_contexts_apply_once_and_restore_at_the_outermost(no_user_settings):
    with reuse_freed_memory():
        with reuse_freed_memory() as inner:
            assert inner and _memory._depth == 2
        assert _memory._depth == 1
        # still in force after the inner context closed
        _page_faults(4)
        assert _page_faults() < PAGES
    assert _memory._depth == 0


def test_user_settings_are_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    with reuse_freed_memory() as applied:
        assert not applied
        assert _memory._depth == 0


def test_other_c_libraries_are_left_alone(monkeypatch, no_user_settings):
    monkeypatch.setattr(_memory, "_glibc", lambda: None)
    with reuse_freed_memory() as applied:
        assert not applied


@needs_glibc
def test_training_runs_inside_the_context(mdata, fit, no_user_settings):
    depths = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, *args):
            depths.append(_memory._depth)

    fit(mdata, "supervised", train={"max_epochs": 1, "callbacks": [Probe()]})
    assert depths and set(depths) == {1}
    assert _memory._depth == 0

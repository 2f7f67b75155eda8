"""Heap settings of the C allocator while a model trains on the CPU."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# while training: blocks up to 1 GiB come from the heap, and freed memory stays there for the next minibatch (up to
# 2 GiB free at the top of the heap; mallopt takes a C int)
_TRAINING = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1))
# afterwards: the values glibc's own dynamic thresholds reach once a process has freed blocks of 32 MiB or more
_AFTER = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20))
# a user who set glibc's malloc tunables keeps them
_USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_depth = 0


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux (the only allocator these settings apply to), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - absent from musl and other C libraries
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep the memory that training frees in the process heap, for the next minibatch to reuse.

    A training step makes and frees tensors of tens of MB (a minibatch of wide decoder outputs, their gradients).
    glibc's allocator maps blocks of this size freshly from the kernel and unmaps them when freed, so every step
    page-faults them in again: an epoch of the 10k-cell synthetic set of ``benchmarks/scale.py`` took 430k-440k minor
    page faults without this context and about 80k with it, at the same peak memory (about 5 % of the epoch time on
    the virtual machines where it was measured, where a page fault is costly). Inside this context blocks of up to 1 GiB come from the heap and freed memory is not
    returned to the system; on exit the heap is trimmed (the retained memory is released) and glibc's thresholds are
    set to the values its own dynamic rule reaches (32 MiB, trim at 64 MiB).

    Nothing changes on platforms other than Linux with glibc, or when the user set glibc's malloc tunables
    (``GLIBC_TUNABLES``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``). Nested contexts
    apply the settings once.

    Yields
    ------
    Whether the settings are in force.
    """
    global _depth
    libc = None if any(k in os.environ for k in _USER_SETTINGS) else _glibc()
    if libc is None:
        yield False
        return
    if _depth == 0:
        for key, value in _TRAINING:
            libc.mallopt(key, value)
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0:
            for key, value in _AFTER:
                libc.mallopt(key, value)
            libc.malloc_trim(0)

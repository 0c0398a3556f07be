"""Process tuning shared by everything that times work: the profiler, its neighbours, the
executor's ranks, calibration, the benchmarks and the simulator. Torch-free, so the
simulator can import it without loading torch.

- ``keep_freed_memory``: glibc keeps freed memory for reuse, as CUDA's caching allocator
  does, so big tensors do not pay first-touch page faults anew every step;
- ``gc_paused``: Python's cyclic garbage collector is off inside, so no automatic
  collection lands in a timed loop (or, in the simulator, in a step that builds tens of
  thousands of objects that form no cycles).
"""

from __future__ import annotations

import gc

__all__ = ["gc_paused", "keep_freed_memory"]


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (no mmap for large blocks, no trim), as CUDA's
    caching allocator does: without it every big gradient or activation pays first-touch page
    faults anew. The profiler, its neighbours and every executor rank run with it, and it stays
    for the rest of the process. False where that is not possible (not glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


class gc_paused:  # lower case: it reads like a function, ``with gc_paused():``
    """Python's cyclic garbage collector off inside, and on again after if it was on before.

    ``collect``: one full collection first, so that garbage made before is not carried through
    the paused section. Timed loops want it (a full collection in a process holding torch and
    a model is long enough to show in a measurement, so it runs before the clock starts); the
    simulator, called thousands of times by a search, does not. Long loops collect the young
    generations between steps themselves (``gc.collect(1)``), as torchtitan's
    ``training.gc_freq`` does.

    A class rather than a generator context manager: entering and leaving it is cheap enough
    for a call that the search makes per candidate.
    """

    __slots__ = ("collect", "was_on")

    def __init__(self, collect: bool = True):
        self.collect = collect
        self.was_on = False

    def __enter__(self) -> None:
        self.was_on = gc.isenabled()
        if self.collect:
            gc.collect()
        gc.disable()

    def __exit__(self, *exc) -> None:
        if self.was_on:
            gc.enable()

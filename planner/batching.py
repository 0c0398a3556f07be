"""How a global batch becomes microbatches on data-parallel replicas, and which sizes a profile has."""

from __future__ import annotations

from collections.abc import Iterable

from profiles.types import Profile

from .cluster import MAX_MICROBATCHES, Job

__all__ = ["microbatching", "entry_sizes", "fewest_microbatches"]


def microbatching(job: Job, dp: int) -> list[tuple[int, int]]:
    """(microbatch count, microbatch size) pairs that make the global batch on ``dp`` replicas."""
    if job.global_batch % dp:
        return []
    per_replica = job.global_batch // dp
    if job.microbatch_size:
        if per_replica % job.microbatch_size:
            return []
        pairs = [(per_replica // job.microbatch_size, job.microbatch_size)]
    else:
        pairs = [(per_replica // b, b) for b in range(1, per_replica + 1) if per_replica % b == 0]
    if job.microbatches:
        pairs = [(m, b) for m, b in pairs if m in job.microbatches]
    return [(m, b) for m, b in pairs if m <= MAX_MICROBATCHES]  # bounded (planner.cluster)


def fewest_microbatches(global_batch: int, devices: int, sizes: Iterable[int]) -> float:
    """The fewest microbatches per replica any plan can cut ``global_batch`` into on ``devices``:
    every device a replica, each microbatch of the largest of ``sizes``. More than
    MAX_MICROBATCHES and no plan exists (``pipeplan plan`` and the dashboard both refuse it)."""
    return global_batch / (devices * max(sizes))


def entry_sizes(profile: Profile, dtypes: tuple[str, ...]) -> set[int]:
    """Microbatch sizes profiled in every one of ``dtypes``."""
    sizes = [{e.microbatch_size for e in profile.entries if e.dtype == d} for d in dtypes]
    return set.intersection(*sizes) if sizes else set()

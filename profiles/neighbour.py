"""Neighbours: processes that train the same model beside the profiler, as the other ranks of a
host compute beside each rank in a pipeline (``pipeplan profile --side-by-side N``).

Why: CPU ranks of one host share caches, memory bandwidth and, on SMT machines, cores. A unit
timed alone runs faster than the same unit in a pipeline whose other ranks compute at the same
moment (profiles/README.md gives the figures). With N neighbours training the model (forward +
backward, one thread each, fp32) while the units are timed, the profile holds compute as a
pipeline's ranks meet it. Devices that
share nothing (one GPU per rank) need no neighbours.

``python -m profiles.neighbour SPEC`` is one neighbour: it prints ``ready`` after its first
step and trains until it is killed or its parent (the profiler) is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .contract import UserError
from .tuning import keep_freed_memory

__all__ = ["neighbours", "check_count", "default_count"]


def default_count(device: str) -> int:
    """Neighbours ``pipeplan profile`` starts unless told: on a CPU host with two cores or more,
    one, since every rank of a CPU plan runs on this host (``pipeplan run`` refuses a plan with
    more ranks than it has cores) and so computes beside at least one other; none on a GPU, whose
    ranks share no compute. More ranks per host: give their number less one."""
    return 1 if device == "cpu" and (os.cpu_count() or 1) >= 2 else 0


def check_count(count: int) -> None:
    """A UserError unless ``count`` neighbours and the profiler each get a core."""
    cores = os.cpu_count() or 1
    if count < 0 or count + 1 > cores:
        raise UserError(
            f"--side-by-side {count}: this machine has {cores} cores, so from 0 to {cores - 1} "
            f"neighbours beside the profiler"
        )


@contextmanager
def neighbours(
    count: int, name: str, overrides: dict | None, seq_len: int, microbatch_size: int, attention: str
) -> Iterator[None]:
    """Start ``count`` neighbours, wait until each has run a step, and kill them on exit."""
    check_count(count)
    spec = json.dumps(
        {
            "name": name,
            "overrides": overrides or {},
            "seq_len": seq_len,
            "microbatch_size": microbatch_size,
            "attention": attention,
        }
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "profiles.neighbour", spec], env=env, stdout=subprocess.PIPE, text=True
                )
            )
        for p in procs:
            if p.stdout.readline().strip() != "ready":  # blocks until its first step, or its exit
                raise UserError(
                    f"--side-by-side: a neighbour process training {name} exited with code "
                    f"{p.wait()} before its first step (its error is above)"
                )
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _train(spec: dict) -> None:
    import torch

    from .zoo import build_model

    torch.set_num_threads(1)
    keep_freed_memory()  # as the profiler and the executor run
    model = build_model(spec["name"], spec["overrides"] or None, seed=1, attention=spec["attention"])
    x, y = model.make_batch(spec["microbatch_size"], spec["seq_len"], 1)
    params = [p for u in model.units for p in u.parameters()]
    parent = os.getppid()
    first = True
    while os.getppid() == parent:  # a profiler killed outright leaves no neighbour behind
        model.loss_fn(model.forward(x), y).backward()
        for p in params:
            p.grad = None
        if first:
            print("ready", flush=True)
            first = False


if __name__ == "__main__":
    _train(json.loads(sys.argv[1]))

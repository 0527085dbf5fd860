"""The torch CPU thread count of a run: the user's ``threads=N``, or chosen from the free cores.

    set_threads(cfg.get("threads"))   # mose-train, mose-eval, mose-predict; mose-cli --threads

With more torch threads than free cores, every OpenMP region waits for descheduled threads and a
training step gets 10-30x slower (measured in docs/performance.md and bench/README.md). torch's
default is one thread per physical core, whatever else runs. ``threads: null`` (the default) takes
the cores this process may use minus the ones busy with other work (the 1-minute load average),
at least 1 and at most :data:`MAX_AUTO` (the small default models gain nothing from more), divided
among the processes of this machine (``LOCAL_WORLD_SIZE``, set by DDP launchers).
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)
MAX_AUTO = 4


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None, procs: int | None = None) -> int:
    """``clamp(round((cores - load) / procs), 1, MAX_AUTO)``: free cores per process of this machine.

    ``cores`` default to the usable cores, ``load`` to the 1-minute load average (other jobs; this
    process has barely started when it is read), ``procs`` to ``LOCAL_WORLD_SIZE`` (1 outside DDP).
    """
    cores = _usable_cores() if cores is None else cores
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if procs is None else procs)
    return max(1, min(MAX_AUTO, round((cores - load) / procs)))


def set_threads(threads: int | str | None) -> int:
    """Set torch's intra-op thread count: ``threads`` when given (an int > 0), else :func:`auto_threads`.

    Returns the count set; logs it when it was chosen automatically.
    """
    if threads in (None, "auto"):
        n = auto_threads()
        log.info("torch threads: %d (chosen from %d usable cores, load average %.1f; set threads=N to fix it)",
                 n, _usable_cores(), os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    else:
        n = int(threads)
        if n < 1:
            raise ValueError(f"threads={threads}: give a positive thread count, or null to choose from the free cores")
    torch.set_num_threads(n)
    return n

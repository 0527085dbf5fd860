"""Shared helpers of the benchmarks: environment line, medians, CPU features, child processes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), so bf16-mixed can pay off."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def environment(threads: int) -> str:
    import numpy as np
    import polars as pl
    import torch

    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu_name()} ({os.cpu_count()} logical CPUs; {isa}), GPU: {gpu}; torch {torch.__version__} "
            f"({threads} thread(s)), polars {pl.__version__}, numpy {np.__version__}, Python "
            f"{platform.python_version()}; load average at start {os.getloadavg()[0]:.1f}")


class Timed:
    """Wraps a dataset's ``__getitems__`` and accumulates the seconds spent in it."""

    def __init__(self, ds) -> None:
        self.seconds = 0.0
        self._orig = ds.__getitems__

        def timed(positions):
            start = time.perf_counter()
            out = self._orig(positions)
            self.seconds += time.perf_counter() - start
            return out

        ds.__getitems__ = timed


def run_child(args: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run ``python <args>`` (or the given interpreter as ``args[0]`` if it is a path to python) and
    parse the last stdout line as JSON; the child reports its own peak RSS."""
    cmd = args if args[0].endswith(("python", "python3")) else [sys.executable, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.setdefault("wall_s", time.perf_counter() - start)
    return out


def peak_rss_gib() -> float:
    """This process's peak resident set size (ru_maxrss, KiB on Linux) in GiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

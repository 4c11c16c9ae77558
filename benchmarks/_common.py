"""Shared helpers for the benchmarks: timing, peak memory, machine description, JSON line."""

import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> dict:
    import timm
    import transformers

    info = {
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "timm": timm.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def timed(fn, repeats: int = 1, sync=None) -> tuple[float, object]:
    """Best of `repeats` wall-clock runs (seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        out = fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_isolated(script: str, args: list[str]) -> dict:
    """Run one variant in a fresh interpreter so its peak RSS is its own; returns its last JSON line."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    sys.stderr.write(proc.stderr[-2000:] if os.environ.get("BENCH_VERBOSE") else "")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(f"{r.get(c, '')}".ljust(widths[c]) for c in columns))

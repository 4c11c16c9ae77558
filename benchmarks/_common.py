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


def forward_flops(fn) -> int:
    """FLOPs of one call of `fn`, counted by PyTorch's FlopCounterMode. Its registry covers the
    CUDA attention kernels but not the CPU one SDPA dispatches to, which it would count as 0 (SAM's
    global attention is ~70 GFLOP a layer at full size): that op is counted with the same formula."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def matmul_tflops(n: int, dtype: torch.dtype, device: str, repeats: int, sync=None) -> float:
    """Best dense n x n matmul rate (TFLOP/s): the yardstick for every fraction of peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    seconds, _ = timed(lambda: a @ b, repeats, sync)
    return 2 * n**3 / seconds / 1e12

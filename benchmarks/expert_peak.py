"""Each expert of a mixture against this machine's matmul peak, measured in the same run.

    python benchmarks/expert_peak.py                       # full-size X5, fp32, batch 1
    python benchmarks/expert_peak.py --experts sam --repeats 3
    python benchmarks/expert_peak.py --preset tiny --peak-n 256   # smoke run (tested)
    python benchmarks/expert_peak.py --device cuda --dtype bfloat16 --batch-size 8 --peak-n 8192

For every expert: its forward on its own input (what `EagleVisionTower.expert_calls` hands it),
best of ``--repeats`` after the FLOP-counting call (the warm-up); FLOPs counted by PyTorch's
FlopCounterMode (matmuls, convolutions and attention; elementwise work is not counted, so it shows
up as a lower fraction); and ``fraction_of_peak`` = FLOP/s / the best dense ``--peak-n`` square
matmul rate. That rate is measured before and after the experts: both are reported (a machine
that got busier in between shows as a gap) and fractions are of the higher. Then the whole tower
(resampling and fusion included). Last line: JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import forward_flops, machine, matmul_tflops, peak_rss_gib, print_table, timed  # noqa: E402
from eagle_hf.dtypes import parse_dtype  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="x5")
    p.add_argument("--experts", nargs="+", help="measure only these (default: all of the preset)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peak-n", type=int, default=4096, help="side of the square matmul that sets the peak")
    p.add_argument("--no-tower", action="store_true", help="skip the whole-tower row")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)

    from eagle_hf import EagleVisionTower, vision_preset

    dtype, device = parse_dtype(args.dtype), args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else None  # time the kernels, not their launch
    peak_before = matmul_tflops(args.peak_n, dtype, device, 5, sync)
    torch.manual_seed(0)
    cfg = vision_preset(args.preset)
    unknown = sorted(set(args.experts or []) - set(cfg.expert_order))
    if unknown:
        p.error(f"--experts {' '.join(unknown)}: not in preset {args.preset!r} ({', '.join(cfg.expert_order)})")
    if args.experts:
        cfg = vision_preset(args.preset, [n for n in cfg.expert_order if n in args.experts])
    with torch.device(device):
        tower = EagleVisionTower._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    pixels = torch.randn(args.batch_size, 3, cfg.image_size, cfg.image_size, dtype=dtype, device=device)
    rows = []
    with torch.inference_mode():
        calls = tower.expert_calls(pixels)
        for name, expert in tower.experts.items():
            x, extra = calls[name]
            flops = forward_flops(lambda: expert(x, **extra))  # also the warm-up
            seconds, _ = timed(lambda: expert(x, **extra), args.repeats, sync)
            rows.append({"expert": name, "seconds": seconds, "gflop": flops / 1e9, "tflops_per_s": flops / seconds / 1e12})
            print(f"# {name}: {seconds:.3f} s, {flops / 1e9:.1f} GFLOP", flush=True)
        if not args.no_tower:
            flops = forward_flops(lambda: tower(pixels))
            seconds, _ = timed(lambda: tower(pixels), args.repeats, sync)
            rows.append({"expert": "whole tower", "seconds": seconds, "gflop": flops / 1e9,
                         "tflops_per_s": flops / seconds / 1e12})
    peak_after = matmul_tflops(args.peak_n, dtype, device, 5, sync)
    peak = max(peak_before, peak_after)
    for row in rows:
        row["fraction_of_peak"] = row["tflops_per_s"] / peak
    print(f"matmul peak ({args.peak_n}^2, {args.dtype}): {peak_before * 1e3:.1f} GFLOP/s before, "
          f"{peak_after * 1e3:.1f} after; fractions are of the higher")
    print_table([{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                ["expert", "seconds", "gflop", "tflops_per_s", "fraction_of_peak"])
    result = {"benchmark": "expert_peak", "preset": args.preset, "dtype": args.dtype, "device": device,
              "batch_size": args.batch_size,
              "peak_tflops": {"before": peak_before, "after": peak_after}, "rows": rows,
              "peak_rss_gib": peak_rss_gib(), "machine": machine()}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Benchmark 1: the vision mixture forward, eagle-hf vs the simple composition of the same modules.

The baseline runs the experts one after another the way the original code did: every expert
resizes the shared input itself, and Pix2Struct's input goes through the CPU image processor
(de-normalise, numpy, `Pix2StructImageProcessorPil`, back to tensors). Both variants use the
same module objects and weights, so the ratio measures only the composition.

    python benchmarks/vision_mixture.py --preset x5 --batch-sizes 1 4       # full size (slow on CPU)
    python benchmarks/vision_mixture.py --preset tiny --batch-sizes 1 4     # smoke run

Each variant runs in its own process so that its peak RSS is its own. Last line: JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, peak_rss_gib, print_table, run_isolated, timed  # noqa: E402
from eagle_hf.dtypes import parse_dtype  # noqa: E402

VARIANTS = ["baseline", "eagle_hf", "eagle_hf_channels_last", "eagle_hf_compile"]


def build_tower(preset: str, dtype: torch.dtype, device: str):
    from eagle_hf import EagleVisionTower, vision_preset

    torch.manual_seed(0)
    cfg = vision_preset(preset)
    # Built directly in `dtype` (no float32 build then cast, which would double the peak memory).
    tower = EagleVisionTower._from_config(cfg, dtype=dtype).to(device).eval()
    return tower


def simple_forward(tower, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The original composition, expert by expert, with per-expert timings."""
    from transformers.models.pix2struct.image_processing_pil_pix2struct import Pix2StructImageProcessorPil
    from transformers.models.pix2struct.modeling_pix2struct import Pix2StructVisionModel

    cfg = tower.config
    grid, size, dtype = cfg.grid_size, cfg.image_size, pixel_values.dtype
    blocks, times = [], {}
    for name, expert in tower.experts.items():
        start = time.perf_counter()
        x = pixel_values
        if expert.input_size != size:
            x = F.interpolate(x.float(), size=(expert.input_size,) * 2, mode="bilinear", align_corners=True).to(dtype)
        if name == "pix2struct":
            mean = torch.tensor(cfg.image_mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(cfg.image_std, dtype=dtype, device=x.device).view(1, 3, 1, 1)
            raw = ((x * std + mean) * 255).float().cpu().numpy()
            proc = Pix2StructImageProcessorPil(is_vqa=False, max_patches=expert.config.max_patches,
                                               patch_size={"height": expert.config.patch_size,
                                                           "width": expert.config.patch_size})
            enc = proc(images=list(raw), return_tensors="pt", input_data_format="channels_first")
            patches = enc["flattened_patches"].to(x.device, dtype)
            mask = enc["attention_mask"].to(x.device, dtype)
            rows, cols = expert.config.patch_grid(x.shape[-2], x.shape[-1])
            out = Pix2StructVisionModel.forward(expert, flattened_patches=patches, attention_mask=mask)
            tokens = out.last_hidden_state[:, : rows * cols]
            feature_map = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)
        else:
            feature_map = expert(x)
        if feature_map.shape[-1] != grid:
            feature_map = F.interpolate(feature_map.float(), size=(grid, grid), mode="bilinear",
                                        align_corners=True).to(dtype)
        blocks.append(feature_map.flatten(2).transpose(1, 2))
        times[name] = time.perf_counter() - start
    return torch.cat(blocks, -1), times


def eagle_forward(tower, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict]:
    times = {}
    hooks = []
    for name, expert in tower.experts.items():
        hooks.append(expert.register_forward_pre_hook(lambda m, a, n=name: times.__setitem__(n, -time.perf_counter())))
        hooks.append(expert.register_forward_hook(lambda m, a, o, n=name: times.__setitem__(n, times[n] + time.perf_counter())))
    try:
        out = tower(pixel_values).last_hidden_state
    finally:
        for h in hooks:
            h.remove()
    return out, times


def run_variant(args) -> dict:
    dtype = parse_dtype(args.dtype)
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    t0 = time.perf_counter()
    tower = build_tower(args.preset, dtype, device)
    build_s = time.perf_counter() - t0
    forward = simple_forward if args.variant == "baseline" else eagle_forward
    if args.variant == "eagle_hf_channels_last":
        tower = tower.to(memory_format=torch.channels_last)
    if args.variant == "eagle_hf_compile":
        tower.forward = torch.compile(tower.forward, dynamic=False)
    size = tower.config.image_size
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch_size, 3, size, size, generator=g).to(device, dtype)
    with torch.inference_mode():
        if args.warmup:
            forward(tower, pixel_values)
        seconds, (features, per_expert) = timed(lambda: forward(tower, pixel_values), args.repeats, sync)
    return {
        "variant": args.variant, "preset": args.preset, "batch_size": args.batch_size, "dtype": args.dtype,
        "device": device, "seconds": seconds, "seconds_per_image": seconds / args.batch_size,
        "per_expert_s": {k: round(v, 4) for k, v in per_expert.items()}, "peak_rss_gib": peak_rss_gib(),
        "build_s": build_s, "checksum": float(features.float().abs().mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="x5")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="+", default=VARIANTS[:3], choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", action="store_true", help="one untimed forward first (default on GPU)")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:  # child process
        print(json.dumps(run_variant(args)))
        return
    if args.device.startswith("cuda"):
        args.warmup = True
    rows = []
    for batch in args.batch_sizes:
        for variant in args.variants:
            child = ["--variant", variant, "--batch-size", str(batch), "--preset", args.preset, "--dtype", args.dtype,
                     "--device", args.device, "--repeats", str(args.repeats)] + (["--warmup"] if args.warmup else [])
            row = run_isolated(__file__, child)
            rows.append(row)
            print(f"# {variant} batch {batch}: {row['seconds_per_image']:.3f} s/image, peak {row['peak_rss_gib']:.2f} GiB,"
                  f" per expert {row['per_expert_s']}", flush=True)
    for row in rows:
        base = next(r for r in rows if r["variant"] == "baseline" and r["batch_size"] == row["batch_size"])
        row["ratio_vs_baseline"] = round(row["seconds"] / base["seconds"], 3)
        row["same_output"] = abs(row["checksum"] - base["checksum"]) <= 1e-3 * max(1.0, abs(base["checksum"]))
    print_table([{**r, "seconds_per_image": f"{r['seconds_per_image']:.3f}", "peak_rss_gib": f"{r['peak_rss_gib']:.2f}"}
                 for r in rows], ["variant", "batch_size", "seconds_per_image", "ratio_vs_baseline", "peak_rss_gib",
                                  "same_output"])
    target = all(r["ratio_vs_baseline"] <= 1.0 for r in rows if r["variant"] == "eagle_hf")
    print(json.dumps({"benchmark": "vision_mixture", "machine": machine(), "rows": rows,
                      "target_ratio_le_1": target}))


if __name__ == "__main__":
    main()

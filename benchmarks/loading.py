"""Benchmark 3: loading a full-size X5 checkpoint (tiny LLM) from safetensors.

eagle-hf (`AutoModelForImageTextToText.from_pretrained`: meta-device init, weights assigned from
the memory-mapped safetensors) vs the plain way: build the model with random init, `torch.load`
a pickled state dict, `load_state_dict`. Each variant runs in its own process; peak RSS is
compared with the checkpoint size.

    python benchmarks/loading.py [--dtype bfloat16] [--workdir /tmp/eagle-hf-bench]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, peak_rss_gib, print_table, run_isolated  # noqa: E402
from eagle_hf.dtypes import parse_dtype  # noqa: E402


def checkpoint(workdir: Path, dtype: torch.dtype) -> Path:
    """Write the X5 + tiny LLM checkpoint once (safetensors and a pickled copy for the baseline)."""
    import eagle_hf  # noqa: F401
    from eagle_hf import EagleVLForConditionalGeneration, preset_config

    out = workdir / f"x5-{str(dtype).split('.')[-1]}"
    if (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = EagleVLForConditionalGeneration._from_config(preset_config("x5"), dtype=dtype)
    model.save_pretrained(out, max_shard_size="2GB")
    torch.save(model.state_dict(), out / "baseline_state_dict.pt")
    (out / "done").write_text("ok")
    return out


def child(args) -> dict:
    import eagle_hf  # noqa: F401
    from transformers import AutoConfig, AutoModelForImageTextToText

    dtype = parse_dtype(args.dtype)
    start = time.perf_counter()
    if args.variant == "eagle_hf":
        model = AutoModelForImageTextToText.from_pretrained(args.path, dtype=dtype)
    else:
        config = AutoConfig.from_pretrained(args.path)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
        state = torch.load(os.path.join(args.path, "baseline_state_dict.pt"), map_location="cpu")
        model.load_state_dict(state)
        del state
    seconds = time.perf_counter() - start
    n = model.num_parameters()
    return {"variant": args.variant, "seconds": seconds, "peak_rss_gib": peak_rss_gib(), "parameters": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--workdir", default="/tmp/eagle-hf-bench")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    path = checkpoint(Path(args.workdir), parse_dtype(args.dtype))
    size_gib = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**30
    rows = [run_isolated(__file__, ["--variant", v, "--path", str(path), "--dtype", args.dtype])
            for v in ("baseline", "eagle_hf")]
    for r in rows:
        r["rss_over_checkpoint"] = round(r["peak_rss_gib"] / size_gib, 3)
        r["seconds"] = round(r["seconds"], 2)
        r["peak_rss_gib"] = round(r["peak_rss_gib"], 2)
    print(f"checkpoint: {size_gib:.2f} GiB of safetensors ({args.dtype})")
    print_table(rows, ["variant", "seconds", "peak_rss_gib", "rss_over_checkpoint"])
    ours = rows[-1]
    print(json.dumps({"benchmark": "loading", "machine": machine(), "checkpoint_gib": round(size_gib, 3),
                      "rows": rows, "target_rss_le_1.2x": ours["rss_over_checkpoint"] <= 1.2,
                      "speedup_vs_baseline": round(rows[0]["seconds"] / ours["seconds"], 2)}))


if __name__ == "__main__":
    main()

"""SAM expert layers: eagle-hf's attention path vs transformers' `SamVisionLayer` (SDPA), same weights.

One full-size global layer (64 x 64 tokens, 16 heads: a 16 x 4096 x 4096 relative-position bias)
and one windowed layer (14 x 14 windows, the grid padded from 64 to 70), alternating runs in one
process, forward only:

    python benchmarks/sam_attention.py                 # full size (~3 GiB)
    python benchmarks/sam_attention.py --tiny          # smoke run

Prints per-layer times (best of --repeats), the ratio and the max abs difference. Last line: JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, timed  # noqa: E402
from eagle_hf.dtypes import parse_dtype  # noqa: E402


def main(argv=None):
    from transformers.models.sam.modeling_sam import SamVisionLayer

    from eagle_hf.modeling.expert_sam import EagleSamExpertConfig, EagleSamVisionLayer
    from eagle_hf.modeling.registry import get_expert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    dtype = parse_dtype(args.dtype)
    cfg = EagleSamExpertConfig(**get_expert("sam").preset("tiny" if args.tiny else "full_size"))
    cfg._attn_implementation = "sdpa"
    side = cfg.image_size // cfg.patch_size
    torch.manual_seed(0)
    results = {}
    for kind, window in (("global", 0), ("window", cfg.window_size)):
        library = SamVisionLayer(cfg, window_size=window).to(dtype).eval()
        with torch.no_grad():
            library.attn.rel_pos_h.normal_(0, 0.02)
            library.attn.rel_pos_w.normal_(0, 0.02)
        ours = EagleSamVisionLayer(cfg, window_size=window).to(dtype).eval()
        ours.load_state_dict(library.state_dict())
        x = torch.randn(1, side, side, cfg.hidden_size, dtype=dtype)
        best = {"transformers": float("inf"), "eagle_hf": float("inf")}
        with torch.inference_mode():
            for _ in range(args.repeats):  # alternate, so drifting load hits both alike
                t, expected = timed(lambda: library(x))
                best["transformers"] = min(best["transformers"], t)
                t, got = timed(lambda: ours(x))
                best["eagle_hf"] = min(best["eagle_hf"], t)
        diff = (got.float() - expected.float()).abs().max().item()
        results[kind] = {**{k: round(v, 4) for k, v in best.items()},
                         "ratio": round(best["eagle_hf"] / best["transformers"], 3), "max_abs_diff": diff}
        print(f"{kind:6s} layer  transformers {best['transformers']:.3f} s  eagle-hf {best['eagle_hf']:.3f} s  "
              f"ratio {results[kind]['ratio']:.2f}x  max|diff| {diff:.1e}")
    print(json.dumps({"benchmark": "sam_attention", "tiny": args.tiny, "dtype": args.dtype, "layers": results,
                      "machine": machine()}))


if __name__ == "__main__":
    main()

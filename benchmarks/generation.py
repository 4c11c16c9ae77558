"""Benchmark 4: generation throughput of a small EAGLE model.

Reports decode tokens/s at batch 1 and batch 8 (greedy, fixed number of new tokens), the time to
first token split into its vision part (experts + projector) and its LLM part (prefill), and how
often the vision tower ran per `generate` call (must be once, never per decoding step).

    python benchmarks/generation.py [--new-tokens 32] [--batch-sizes 1 8]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, print_table  # noqa: E402
from eagle_hf.dtypes import parse_dtype  # noqa: E402

SMALL_TEXT = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=8, vocab_size=2048, max_position_embeddings=1024)


def build(device: str, dtype: torch.dtype):
    from eagle_hf import EagleVLForConditionalGeneration, preset_config

    torch.manual_seed(0)
    cfg = preset_config("tiny", text_config=SMALL_TEXT)
    return EagleVLForConditionalGeneration(cfg).to(device, dtype).eval()


def inputs(model, batch: int, prompt_len: int, device: str):
    cfg = model.config
    g = torch.Generator().manual_seed(batch)
    text = torch.randint(4, cfg.text_config.vocab_size - 1, (batch, prompt_len), generator=g)
    image = torch.full((batch, cfg.image_seq_length), cfg.image_token_id)
    ids = torch.cat([text[:, :2], image, text[:, 2:]], 1).to(device)
    size = cfg.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=g).to(device, model.dtype)
    return ids, torch.ones_like(ids), pixels


def measure(model, batch: int, new_tokens: int, prompt_len: int, device: str) -> dict:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ids, mask, pixels = inputs(model, batch, prompt_len, device)
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=2,
                           min_new_tokens=2, do_sample=False)  # warm-up
            calls.clear()
            sync(); t0 = time.perf_counter()
            feats = model.get_image_features(pixel_values=pixels)
            sync(); vision_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, mm_encoder_outputs={"image": feats}, logits_to_keep=1)
            sync(); prefill_s = time.perf_counter() - t0
            calls.clear()
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False)
            sync(); total_s = time.perf_counter() - t0
    finally:
        hook.remove()
    generated = (out.shape[1] - ids.shape[1]) * batch
    decode_s = max(total_s - vision_s - prefill_s, 1e-9)
    return {"batch_size": batch, "new_tokens": new_tokens, "total_s": round(total_s, 4),
            "tokens_per_s": round(generated / total_s, 2),
            "decode_tokens_per_s": round((generated - batch) / decode_s, 2),
            "ttft_vision_s": round(vision_s, 4), "ttft_llm_s": round(prefill_s, 4),
            "vision_calls_per_generate": len(calls)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    model = build(args.device, parse_dtype(args.dtype))
    rows = [measure(model, b, args.new_tokens, args.prompt_len, args.device) for b in args.batch_sizes]
    for r in rows:
        r["speedup_vs_batch1"] = round(r["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    print_table(rows, ["batch_size", "tokens_per_s", "speedup_vs_batch1", "ttft_vision_s", "ttft_llm_s",
                       "vision_calls_per_generate"])
    big = [r for r in rows if r["batch_size"] >= 8]
    print(json.dumps({"benchmark": "generation", "machine": machine(), "device": args.device, "dtype": args.dtype,
                      "rows": rows, "target_batch8_ge_4x": bool(big) and all(r["speedup_vs_batch1"] >= 4 for r in big),
                      "images_encoded_once": all(r["vision_calls_per_generate"] == 1 for r in rows)}))


if __name__ == "__main__":
    main()

"""One prepared GPU run: vision mixture, generation and a training step, written to one JSON file.

    python benchmarks/gpu.py --out gpu.json                               # one large GPU, < 8 min
    python benchmarks/gpu.py --out gpu.json --original-python ORIG_VENV/bin/python --original-repo EAGLE
    python benchmarks/gpu.py --device cpu --tiny --out tiny.json          # smoke run (tested on CPU)

Measured, in this order (each phase frees its model before the next one is built):

* ``matmul_peak``: the best dense square matmul rate of this device in ``--dtype`` (the yardstick
  for every ``fraction_of_peak`` below), next to the vendor's nominal dense bf16 peak when known.
* ``mixture``: the full-size X5 vision tower (``--tiny``: the tiny mix) built directly in
  ``--dtype`` with SDPA attention, forward at batch 1 and 8: seconds, images/s, FLOPs counted
  with PyTorch's FlopCounterMode, TFLOP/s, fraction of the measured peak, peak memory.
* ``original_vs_eagle_hf``: with ``--original-python``/``--original-repo``, the original NVlabs
  code in its own venv against eagle-hf on the same input and weights, alternating
  (``benchmarks/original/side_by_side.py``; today the SAM expert); otherwise why it was skipped.
* ``generation``: X5 + a 7B-shaped random Llama (``--tiny``: tiny), greedy decoding at batch 1
  and 8: tokens/s, time to first token (vision / prefill), vision-tower calls per ``generate``.
* ``training``: one full fine-tuning step (forward, backward, AdamW) of the same model with
  gradient checkpointing: seconds, model FLOPs (3 x the counted forward, recomputation not
  counted), MFU against the measured and the nominal peak, peak memory.
"""

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import forward_flops, machine, matmul_tflops, peak_rss_gib, timed  # noqa: E402
from eagle_hf.dtypes import parse_dtype  # noqa: E402
from generation import measure as measure_generation  # noqa: E402
from train_throughput import PEAK_TFLOPS  # noqa: E402

# Llama-2-7B's shape (random weights: the speed of a 7B decoder does not depend on its values).
LLAMA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
TINY_LLM = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)


class Device:
    def __init__(self, name: str):
        self.name = name
        self.cuda = name.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        # On the CPU, the process's peak RSS (it never goes down, so later phases include earlier ones).
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else peak_rss_gib()

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def best_time(dev: Device, fn, repeats: int) -> float:
    return timed(fn, repeats, dev.sync)[0]


def matmul_peak(dev: Device, dtype: torch.dtype, n: int, repeats: int) -> dict:
    tflops = matmul_tflops(n, dtype, dev.name, repeats, dev.sync)
    nominal = None
    if dev.cuda:
        nominal = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
    return {"n": n, "tflops": tflops, "nominal_bf16_tflops": nominal}


def mixture(dev: Device, dtype: torch.dtype, tiny: bool, batch_sizes, repeats: int, peak_tflops: float) -> dict:
    from eagle_hf import EagleVisionTower, vision_preset

    torch.manual_seed(0)
    cfg = vision_preset("tiny" if tiny else "x5")
    cfg._attn_implementation = "sdpa"
    with torch.device(dev.name):
        tower = EagleVisionTower._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    rows = {}
    with torch.inference_mode():
        for batch in batch_sizes:
            pixels = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=dev.name, dtype=dtype)
            tower(pixels)  # warm-up (kernels, allocator)
            flops = forward_flops(lambda: tower(pixels))
            dev.reset_peak()
            seconds = best_time(dev, lambda: tower(pixels), repeats)
            rows[str(batch)] = {"batch_size": batch, "seconds": seconds, "images_per_s": batch / seconds,
                                "flops": flops, "tflops_per_s": flops / seconds / 1e12,
                                "fraction_of_peak": flops / seconds / 1e12 / peak_tflops,
                                "peak_memory_gib": dev.peak_gib()}
            print(f"# mixture batch {batch}: {seconds:.3f} s, {rows[str(batch)]['tflops_per_s']:.2f} TFLOP/s", flush=True)
    tower = None  # drop the last reference before freeing the cache (the closures above read it)
    dev.free()
    return rows


def original_vs_eagle(args) -> dict:
    if not (args.original_python and args.original_repo):
        return {"skipped": "no --original-python/--original-repo given (benchmarks/original/setup_env.sh builds them)"}
    script = Path(__file__).parent / "original" / "side_by_side.py"
    cmd = [sys.executable, str(script), "--original-python", args.original_python, "--original-repo",
           args.original_repo, "--device", args.device, "--dtype", args.dtype, "--pairs", "2"]
    if args.tiny:
        cmd.append("--tiny")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_vlm(dev: Device, dtype: torch.dtype, tiny: bool):
    from eagle_hf import EagleVLForConditionalGeneration, preset_config

    torch.manual_seed(0)
    cfg = preset_config("tiny" if tiny else "x5", text_config=dict(TINY_LLM if tiny else LLAMA_7B))
    with torch.device(dev.name):
        return EagleVLForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="sdpa")


def training_step(dev: Device, model, batch_size: int, text_tokens: int, peak: dict) -> dict:
    model.train()
    model.activation_checkpointing_enable()
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    # text ids below the image token id (the presets put it last in the vocabulary)
    text = torch.randint(4, cfg.image_token_id, (batch_size, text_tokens), generator=g)
    image = torch.full((batch_size, cfg.image_seq_length), cfg.image_token_id)
    ids = torch.cat([text[:, :4], image, text[:, 4:]], 1)
    labels = ids.clone()
    from eagle_hf.processing import IGNORE_INDEX

    labels[:, : 4 + cfg.image_seq_length] = IGNORE_INDEX  # loss on the text after the image
    size = cfg.vision_config.image_size
    batch = {"input_ids": ids.to(dev.name), "attention_mask": torch.ones_like(ids).to(dev.name),
             "labels": labels.to(dev.name),
             "pixel_values": torch.randn(batch_size, 3, size, size, generator=g).to(dev.name, model.dtype)}
    with torch.no_grad():
        fwd = forward_flops(lambda: model(**batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.cuda or None)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (optimizer state, kernels)
    dev.reset_peak()
    seconds = best_time(dev, step, 2)
    flops = 3 * fwd
    row = {"batch_size": batch_size, "seq_len": batch["input_ids"].shape[1], "gradient_checkpointing": True,
           "parameters": model.num_parameters(), "tokens": batch["input_ids"].numel(),
           "seconds": seconds, "forward_flops": fwd, "model_flops": flops, "tflops_per_s": flops / seconds / 1e12,
           "mfu_vs_measured_peak": flops / seconds / 1e12 / peak["tflops"], "peak_memory_gib": dev.peak_gib()}
    if peak["nominal_bf16_tflops"]:
        row["mfu_vs_nominal_peak"] = flops / seconds / 1e12 / peak["nominal_bf16_tflops"]
    optimizer = None  # drop the optimizer state before the next configuration
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tiny", action="store_true", help="tiny models (smoke run, any device)")
    p.add_argument("--out", default="gpu-benchmark.json")
    p.add_argument("--original-python", help="python of the original's venv (benchmarks/original/setup_env.sh)")
    p.add_argument("--original-repo", help="checkout of NVlabs/EAGLE")
    p.add_argument("--new-tokens", type=int, default=None, help="default 32 (tiny: 4)")
    p.add_argument("--train-batch-size", type=int, default=8)
    args = p.parse_args(argv)
    dev, dtype = Device(args.device), parse_dtype(args.dtype)
    start = time.perf_counter()
    repeats = 1 if args.tiny else 3
    peak = matmul_peak(dev, dtype, 256 if args.tiny else 8192, repeats)
    print(f"# matmul peak: {peak['tflops']:.2f} TFLOP/s", flush=True)
    result = {"benchmark": "gpu", "device": args.device, "dtype": args.dtype, "tiny": args.tiny,
              "machine": machine(), "matmul_peak": peak}
    out = Path(args.out)

    def save():  # after every phase, so that a run stopped at its time limit keeps what it measured
        out.write_text(json.dumps(result, indent=1))

    result["mixture"] = mixture(dev, dtype, args.tiny, [1, 8], repeats, peak["tflops"])
    save()
    result["original_vs_eagle_hf"] = original_vs_eagle(args)
    save()
    model = build_vlm(dev, dtype, args.tiny).eval()
    new_tokens = args.new_tokens or (3 if args.tiny else 32)
    result["generation"] = []
    for batch in (1, 8):
        dev.reset_peak()
        row = measure_generation(model, batch, new_tokens, 16, args.device)
        row["peak_memory_gib"] = dev.peak_gib()
        result["generation"].append(row)
        print(f"# generation batch {batch}: {row['tokens_per_s']} tok/s", flush=True)
        save()
    result["training"] = training_step(dev, model, args.train_batch_size, 64, peak)
    print(f"# training step: {result['training']['seconds']:.3f} s, MFU {result['training']['mfu_vs_measured_peak']:.3f}",
          flush=True)
    result["peak_memory_gib"] = max([dev.peak_gib()] + [r["peak_memory_gib"] for r in result["mixture"].values()]
                                    + [r["peak_memory_gib"] for r in result["generation"]])
    result["total_s"] = time.perf_counter() - start
    save()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

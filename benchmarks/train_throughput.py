"""Benchmark: training-step throughput and peak memory.

For the ``tiny-train`` model (the quickstart's) and a larger model that still trains on a CPU,
one optimizer step (forward, backward, AdamW) on a batch shaped like real data: samples/s,
tokens/s, seconds per step, peak memory (each variant in its own process, so its peak RSS is its
own), and on a GPU the peak allocated memory and MFU (FLOPs counted with PyTorch's FlopCounterMode
over one step, divided by the GPU's dense bf16 peak).

    python benchmarks/train_throughput.py [--models tiny small] [--steps 10] [--checkpointing]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, peak_rss_gib, print_table, run_isolated  # noqa: E402
from eagle_hf.dtypes import parse_dtype  # noqa: E402
from eagle_hf.processing import IGNORE_INDEX  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) used for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}

SMALL_EXPERTS = {
    "clip": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, patch_size=16,
                 image_size=224, projection_dim=384),
    "convnext": dict(depths=[2, 2, 6, 2], dims=[64, 128, 256, 512], feature_stage=2, input_size=224, patch_size=4,
                     ls_init_value=1.0),
}
SMALL_TEXT = dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8, vocab_size=8192, max_position_embeddings=1024)
# (batch size, text tokens per sample besides the image)
SHAPES = {"tiny": (32, 70), "small": (4, 96)}


def build(name: str):
    from eagle_hf import EagleVisionConfig, EagleVLConfig, EagleVLForConditionalGeneration
    from eagle_hf.modeling.presets import tiny_train_config

    torch.manual_seed(0)
    if name == "tiny":
        config = tiny_train_config(vocab_size=400, image_token_id=4)
    else:
        vision = EagleVisionConfig(expert_order=list(SMALL_EXPERTS), image_size=224, grid_size=14,
                                   **{f"{n}_config": dict(c) for n, c in SMALL_EXPERTS.items()})
        config = EagleVLConfig(vision_config=vision, text_config=dict(SMALL_TEXT), image_token_id=4)
    return EagleVLForConditionalGeneration(config)


def batch_for(model, batch_size: int, text_tokens: int, device: str, dtype: torch.dtype) -> dict:
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    text = torch.randint(5, cfg.text_config.vocab_size, (batch_size, text_tokens), generator=g)  # above image_token_id=4
    image = torch.full((batch_size, cfg.image_seq_length), cfg.image_token_id)
    ids = torch.cat([text[:, :4], image, text[:, 4:]], 1)
    labels = ids.clone()
    labels[:, : 4 + cfg.image_seq_length] = IGNORE_INDEX
    size = cfg.vision_config.image_size
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g).to(device, dtype)}


def count_flops(model, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(name: str, steps: int, device: str, dtype_name: str, checkpointing: bool, batch_size: int | None) -> dict:
    dtype = parse_dtype(dtype_name)
    model = build(name).to(device, dtype).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    bs, text_tokens = SHAPES[name]
    bs = batch_size or bs
    batch = batch_for(model, bs, text_tokens, device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (allocator, kernels, optimizer state)
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    tokens = batch["input_ids"].numel()
    row = {"model": name, "params_M": round(model.num_parameters() / 1e6, 2),
           "batch_size": bs, "seq_len": batch["input_ids"].shape[1], "s_per_step": round(seconds, 4),
           "samples_per_s": round(bs / seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
           "peak_rss_gib": round(peak_rss_gib(), 2), "checkpointing": checkpointing, "dtype": dtype_name}
    if cuda:
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        flops = count_flops(model, batch)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
        row["tflops_per_s"] = round(flops / seconds / 1e12, 2)
        if peak:
            row["mfu"] = round(flops / seconds / (peak * 1e12), 4)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "small"], choices=list(SHAPES))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, help="override the per-model default")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing (LLM and experts)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = p.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.device, dtype, args.checkpointing, args.batch_size)))
        return
    rows = []
    for name in args.models:
        extra = ["--steps", str(args.steps), "--device", args.device, "--dtype", dtype, "--one", name]
        extra += ["--checkpointing"] if args.checkpointing else []
        extra += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        rows.append(run_isolated(__file__, extra))
    columns = ["model", "params_M", "batch_size", "seq_len", "s_per_step", "samples_per_s", "tokens_per_s",
               "peak_rss_gib"]
    if args.device.startswith("cuda"):
        columns += ["peak_gpu_gib", "tflops_per_s", "mfu"]
    print_table(rows, columns)
    print(json.dumps({"benchmark": "train_throughput", "machine": machine(), "device": args.device, "dtype": dtype,
                      "rows": rows}))


if __name__ == "__main__":
    main()

"""Side by side with the original NVlabs/EAGLE code, each in its own environment.

    benchmarks/original/setup_env.sh /tmp/eagle-orig-venv /path/to/EAGLE      # once
    python benchmarks/original/side_by_side.py --original-python /tmp/eagle-orig-venv/bin/python \\
        --original-repo /path/to/EAGLE [--tiny] [--pairs 2]

Today it covers the SAM expert (`SAMVisionTower` of the original, i.e. transformers 4.44's SAM
encoder with EAGLE's short neck and pixel unshuffle, against eagle-hf's `sam` expert). Both sides
get every weight from `shared/parity/detweights.py` under the same state-dict key (the two
modules share their key names), the same seeded input, and run alternately (original, eagle-hf,
original, ...), each in a fresh process whose build is not timed. Printed: both times (best of
the pairs), the ratio and the max abs difference of the outputs. Last line: JSON.

The original resolves `facebook/sam-vit-large` from the Hub at build time; no Hub is reachable
here, so the worker gives `SamModel.from_pretrained` the same architecture from a config (the
weights are overwritten with the deterministic ones anyway).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def sam_config(tiny: bool) -> dict:
    sys.path.insert(0, str(HERE.parents[2] / "src"))
    import eagle_hf  # noqa: F401  (registers the experts)
    from eagle_hf.modeling.registry import get_expert

    cfg = get_expert("sam").preset("tiny" if tiny else "full_size")
    cfg.pop("pixel_unshuffle", None)
    return cfg


def detweights(parity_dir: str):
    sys.path.insert(0, parity_dir)
    import detweights as dw

    return dw


def fill_state(module, parity_dir: str):
    import torch

    dw = detweights(parity_dir)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            tensor.copy_(dw.fill(key, tuple(tensor.shape), torch.float32).to(tensor.dtype))


def worker(args) -> dict:
    """Runs in either environment: build one side, fill weights, time the forward, save the output."""
    import torch

    config = json.loads(args.config)
    torch.manual_seed(0)
    if args.side == "original":
        import transformers
        from transformers import SamConfig, SamModel

        def offline(cls, *a, **k):  # the Hub is not reachable: same architecture, weights set below
            return SamModel(SamConfig(vision_config=config))

        SamModel.from_pretrained = classmethod(offline)
        transformers.SamProcessor.from_pretrained = classmethod(lambda cls, *a, **k: transformers.SamProcessor(
            transformers.SamImageProcessor()))
        # The module file alone: the `eagle` package's __init__ imports the whole LLaVA stack.
        import importlib.util

        path = Path(args.original_repo) / "eagle" / "model" / "multimodal_encoder" / "sam_encoder.py"
        spec = importlib.util.spec_from_file_location("original_sam_encoder", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        SAMVisionTower = module.SAMVisionTower

        tower_args = argparse.Namespace(input_image_size=config["image_size"], add_pixel_shuffle=True, freeze_vision=False)
        tower = SAMVisionTower("SAM-L", tower_args)
        model, forward = tower.vision_tower, tower
    else:
        sys.path.insert(0, str(HERE.parents[2] / "src"))
        from eagle_hf.modeling.expert_sam import EagleSamExpert, EagleSamExpertConfig

        model = EagleSamExpert(EagleSamExpertConfig(**config))
        forward = model
    model.eval()
    fill_state(model, args.parity_dir)
    dtype = getattr(torch, args.dtype)
    model.to(args.device, dtype)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, config["image_size"], config["image_size"], generator=g).to(args.device, dtype)
    with torch.no_grad():
        forward(x)  # warm-up
        sync()
        start = time.perf_counter()
        out = forward(x)
        sync()
        seconds = time.perf_counter() - start
    out = out.float().cpu()
    torch.save(out.contiguous(), args.save)
    return {"side": args.side, "seconds": seconds, "torch": torch.__version__}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original-python", help="python of the venv built by setup_env.sh")
    p.add_argument("--original-repo", help="checkout of NVlabs/EAGLE")
    p.add_argument("--tiny", action="store_true", help="tiny SAM config (smoke run)")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--parity-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        print(json.dumps(worker(args)))
        return
    if not (args.original_python and args.original_repo):
        p.error("--original-python and --original-repo are required (build them with setup_env.sh)")
    if args.parity_dir is None:
        sys.path.insert(0, str(HERE.parents[2] / "src"))
        from eagle_hf.testing.parity import find_parity_dir

        found = find_parity_dir()
        if found is None:
            p.error("shared/parity (detweights.py) not found; pass --parity-dir")
        args.parity_dir = str(found)
    config = json.dumps(sam_config(args.tiny))
    pythons = {"original": args.original_python, "eagle_hf": sys.executable}
    times = {"original": [], "eagle_hf": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.pairs):
            for side in ("original", "eagle_hf"):
                cmd = [pythons[side], str(HERE), "--side", side, "--config", config, "--save", f"{tmp}/{side}.pt",
                       "--original-repo", args.original_repo, "--parity-dir", args.parity_dir,
                       "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
                       "--batch-size", str(args.batch_size)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{side} worker failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                times[side].append(row["seconds"])
                print(f"# {side} ({row['torch']}): {row['seconds']:.3f} s", flush=True)
        import torch

        a, b = torch.load(f"{tmp}/original.pt"), torch.load(f"{tmp}/eagle_hf.pt")
        diff = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
    best = {k: min(v) for k, v in times.items()}
    ratio = best["original"] / best["eagle_hf"]
    print(f"sam expert ({'tiny' if args.tiny else 'full size'}): original {best['original']:.3f} s, "
          f"eagle-hf {best['eagle_hf']:.3f} s, eagle-hf is {ratio:.2f}x faster, max|diff| {diff:.2e}")
    print(json.dumps({"benchmark": "side_by_side", "expert": "sam", "tiny": args.tiny, "times_s": times,
                      "best_s": best, "speedup_eagle_hf": ratio, "max_abs_diff": diff,
                      "shape": list(b.shape), "threads": args.threads,
                      "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()

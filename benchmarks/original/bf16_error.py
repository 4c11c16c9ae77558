"""How far the original EAGLE code's own bfloat16 run lands from its float32 run, stage by stage.

    python benchmarks/original/bf16_error.py --original-python VENV/bin/python --original-repo EAGLE \\
        [--case public-clip] [--out bf16_error.json]

Runs in the original's venv (`setup_env.sh`): the original `EagleLlamaForCausalLM` (its files, its
transformers 4.44) built from the parity case's `config.json`, its weights from the rebuilt
original-format checkpoint (`eagle_hf.testing.parity.cached_original_checkpoint`), the fixture's test
image through the original `process_images`, and `model(input_ids, images, image_sizes)` under
`inference_mode` as the fixture authors called it; once in float32, then the same model cast with
`.to(torch.bfloat16)` (what a user of the original does) on the bf16-cast pixel values. Recorded per
stage (vision tower output = the fused features, projector output, logits of the last three
positions), over all elements: max |bf16 - fp32|, the same relative to max |fp32|, and float32 vs
the fixture's samples (a check that the float32 run is the fixture's). These numbers are what
`eagle_hf.testing.parity.BF16_BOUNDS` is derived from. Last line: JSON.

Every tower is built offline (`side_by_side.answer_hub_offline`: the original resolves CLIP, SAM,
Pix2Struct and ConvNeXt's pretrained weights from the Hub at build time; here each is built from the
architecture the fixture records, and the weights are the checkpoint's). For a mixture, each
expert's block of the fused features (its channel slice) is a stage of its own. ``public-x5`` at 2
threads took 49 min here, most of it the original's bf16 forward (transformers 4.44's eager
Pix2Struct and SAM attention in bf16 on this CPU).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from side_by_side import build_original_model, fixture_natives, original_preprocessing  # noqa: E402


def patch_error(repo: str, image_path: str) -> dict:
    """The Pix2Struct expert's input in the original's bf16 run against its float32 run: the tower
    de-normalises the bf16-cast pixel values and hands the processor's patches to its encoder in
    bf16 (seconds: the encoder is a recorder, see `side_by_side.original_preprocessing`)."""
    import torch
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    fp32 = original_preprocessing(repo)([image])[1].float()
    bf16 = original_preprocessing(repo, torch.bfloat16)([image])[1].float()
    diff = (bf16 - fp32).abs()
    return {"max_abs_bf16_vs_fp32": float(diff.max()), "mean_abs_bf16_vs_fp32": float(diff.mean()),
            "max_abs_fp32": float(fp32.abs().max())}


def patches_only(args) -> dict:
    import torch

    return {"case": Path(args.fixture).stem, "torch": torch.__version__, "threads": args.threads,
            "stages": {"pix2struct patches": patch_error(args.original_repo, args.image)}}


def worker(args) -> dict:
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    torch.set_num_threads(args.threads)
    fixture = json.loads(Path(args.fixture).read_text())
    natives = json.loads(args.natives)
    model, config, mm_utils = build_original_model(args.original_repo, fixture, natives, Path(args.checkpoint))
    tower = model.get_model().get_vision_tower()

    image = Image.open(args.image).convert("RGB")
    pixel_values = mm_utils.process_images([image], tower.image_processor, config)
    input_ids = torch.tensor([fixture["inputs"]["input_ids"]])
    image_sizes = fixture["inputs"]["image_sizes"]

    captured = {}
    model.get_model().get_vision_tower().register_forward_hook(
        lambda m, i, o: captured.__setitem__("fused_vision_features", o.detach().float().clone()))
    model.get_model().mm_projector.register_forward_hook(
        lambda m, i, o: captured.__setitem__("projector_output", o.detach().float().clone()))

    def run(dtype):
        captured.clear()
        model.to(dtype)
        with torch.inference_mode():
            out = model(input_ids=input_ids, images=pixel_values.to(dtype), image_sizes=image_sizes, use_cache=False)
        stages = dict(captured)
        stages["logits_last3"] = out.logits[:, -3:].float().clone()
        return stages

    fp32 = run(torch.float32)
    bf16 = run(torch.bfloat16)
    outputs = fixture["outputs"]
    references = {name: outputs[name] for name in fp32}  # stage -> its fixture entry
    experts = outputs["experts"]
    if len(experts) > 1:  # each expert's block of the fused features, against its own fixture samples
        for entry in experts:
            start, end = entry["channel_offset"], entry["channel_offset"] + entry["channels"]
            for run_ in (fp32, bf16):
                run_[f"expert {entry['name']}"] = run_["fused_vision_features"][..., start:end]
            references[f"expert {entry['name']}"] = entry["features"]
    result = {"case": fixture.get("case", Path(args.fixture).stem), "torch": torch.__version__,
              "transformers": transformers.__version__, "threads": args.threads, "stages": {}}
    if "pix2struct" in natives.values():
        result["stages"]["pix2struct patches"] = patch_error(args.original_repo, args.image)
    for name, ref in fp32.items():
        diff = (bf16[name] - ref).abs()
        entry = references[name]
        if name == "logits_last3":
            rows = entry["positions"] if "positions" in entry else entry.get("rows", [])
            fixture_err = None
            if rows:
                errs = []
                for j, row in enumerate(rows):
                    got = ref[0, j].numpy()
                    idx = [i[-1] for i in row["indices"]]
                    errs.append(float(np.abs(got[idx] - np.asarray(row["values"])).max()))
                fixture_err = max(errs)
            argmax_equal = bool((bf16[name].argmax(-1) == ref.argmax(-1)).all())
        else:
            idx = torch.tensor(entry["indices"])
            got = ref[tuple(idx.T)]
            fixture_err = float((got - torch.tensor(entry["values"])).abs().max())
            argmax_equal = None
        result["stages"][name] = {
            "max_abs_bf16_vs_fp32": float(diff.max()), "mean_abs_bf16_vs_fp32": float(diff.mean()),
            "max_abs_fp32": float(ref.abs().max()), "std_fp32": float(ref.std()),
            "relative_to_max_abs": float(diff.max() / ref.abs().max()),
            "fp32_vs_fixture_samples": fixture_err, "argmax_equal": argmax_equal}
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original-python", required=True)
    p.add_argument("--original-repo", required=True)
    p.add_argument("--case", default="public-clip")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--patches-only", action="store_true",
                   help="only the Pix2Struct input patches (seconds; the model is not built)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fixture", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--natives", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(patches_only(args) if args.patches_only else worker(args)))
        return
    import tempfile

    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from eagle_hf.testing.parity import cached_original_checkpoint, find_parity_dir, fixture_image, load_fixture

    parity = find_parity_dir()
    if parity is None:
        p.error("shared/parity not found (set EAGLE_HF_SHARED_DIR)")
    fixture_path = parity / f"{args.case}.json"
    checkpoint = cached_original_checkpoint(fixture_path)
    with tempfile.TemporaryDirectory() as tmp:
        image = f"{tmp}/image.png"
        fixture_image(load_fixture(fixture_path)).save(image)
        cmd = [args.original_python, str(HERE), "--worker", "--original-python", args.original_python,
               "--original-repo", args.original_repo, "--fixture", str(fixture_path), "--checkpoint",
               str(checkpoint), "--image", image, "--threads", str(args.threads),
               "--natives", json.dumps(fixture_natives(load_fixture(fixture_path)))] + (
                   ["--patches-only"] if args.patches_only else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"original worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, row in result["stages"].items():
        print(f"{name}: max|bf16 - fp32| {row['max_abs_bf16_vs_fp32']:.3e} (mean {row['mean_abs_bf16_vs_fp32']:.3e}, "
              f"max|fp32| {row['max_abs_fp32']:.3g}); fp32 vs fixture {row.get('fp32_vs_fixture_samples', '-')}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

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

Only the single-CLIP case is wired so far (its tower resolves `openai/clip-vit-large-patch14-336`
from the Hub at build time; here the same architecture is built from the fixture's recorded
configuration, and the weights are the checkpoint's).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from side_by_side import register_original_packages  # noqa: E402


def worker(args) -> dict:
    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    fixture = json.loads(Path(args.fixture).read_text())
    arch = fixture["outputs"]["experts"][0]["architecture"]["config"]
    vision_cfg = {k: arch[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "patch_size", "image_size", "hidden_act", "layer_norm_eps")}
    size = arch["image_size"]

    def offline_vision_config(cls, *a, **k):
        return transformers.CLIPVisionConfig(**vision_cfg)

    def offline_vision_model(cls, *a, **k):
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision_cfg, attn_implementation=arch.get(
            "attn_implementation", "sdpa")))

    def offline_processor(cls, *a, **k):  # openai/clip-vit-large-patch14-336's preprocessor_config.json values
        return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    transformers.CLIPVisionConfig.from_pretrained = classmethod(offline_vision_config)
    transformers.CLIPVisionModel.from_pretrained = classmethod(offline_vision_model)
    transformers.CLIPImageProcessor.from_pretrained = classmethod(offline_processor)
    register_original_packages(args.original_repo)
    import importlib

    eagle_llama = importlib.import_module("eagle.model.language_model.eagle_llama")
    mm_utils = importlib.import_module("eagle.mm_utils")

    ckpt = Path(args.checkpoint)
    config = eagle_llama.EagleConfig(**json.loads((ckpt / "config.json").read_text()))
    model = eagle_llama.EagleLlamaForCausalLM(config)
    tower = model.get_model().get_vision_tower()
    if not tower.is_loaded:
        tower.load_model()  # what the original's load_pretrained_model does for a delay-loaded tower
    missing, unexpected = model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise SystemExit(f"checkpoint does not match the original model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.eval()

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
    result = {"case": fixture.get("case", Path(args.fixture).stem), "torch": torch.__version__,
              "transformers": transformers.__version__, "threads": args.threads, "stages": {}}
    outputs = fixture["outputs"]
    for name, ref in fp32.items():
        diff = (bf16[name] - ref).abs()
        entry = outputs[name]
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
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fixture", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
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
               str(checkpoint), "--image", image, "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"original worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, row in result["stages"].items():
        print(f"{name}: max|bf16 - fp32| {row['max_abs_bf16_vs_fp32']:.3e} (mean {row['mean_abs_bf16_vs_fp32']:.3e}, "
              f"max|fp32| {row['max_abs_fp32']:.3g}); fp32 vs fixture {row['fp32_vs_fixture_samples']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

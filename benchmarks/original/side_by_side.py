"""Side by side with the original NVlabs/EAGLE code, each in its own environment.

    benchmarks/original/setup_env.sh /tmp/eagle-orig-venv /path/to/EAGLE      # once
    python benchmarks/original/side_by_side.py --original-python /tmp/eagle-orig-venv/bin/python \\
        --original-repo /path/to/EAGLE [--tiny] [--pairs 2]

Three modes (``--what``):

``--what sam`` (default): the SAM expert (`SAMVisionTower` of the original, i.e. transformers 4.44's SAM
encoder with EAGLE's short neck and pixel unshuffle, against eagle-hf's `sam` expert). Both sides
get every weight from `shared/parity/detweights.py` under the same state-dict key (the two
modules share their key names), the same seeded input, and run alternately (original, eagle-hf,
original, ...), each in a fresh process whose build is not timed. Printed: both times (best of
the pairs), the ratio and the max abs difference of the outputs. Last line: JSON.

The original resolves `facebook/sam-vit-large` from the Hub at build time; no Hub is reachable
here, so the worker gives `SamModel.from_pretrained` the same architecture from a config (the
weights are overwritten with the deterministic ones anyway).

``--what preprocessing``: everything between a decoded PIL image and the tensors the experts'
encoders consume, for the released X5 mixture. Original side, the original's own code in its venv:
``eagle.mm_utils.process_images`` (``image_aspect_ratio="pad"``: ``expand2square`` with the mean
colour, then ``preprocess`` of the X5's image processor, which is the ConvNeXt tower's
``CLIPImageProcessor(**cfg)`` with size and crop set to 1024 as its ``load_model`` does), then the
Pix2Struct tower's per-forward round trip, i.e. ``Pix2StructLargeVisionTower.forward`` itself
(de-normalise, ``Pix2StructProcessor`` on the float tensor) with its encoder replaced by a module
that records the ``flattened_patches`` it is given and returns a one-channel dummy (so only the
preprocessing is timed). eagle-hf side: `EagleImageProcessor` (the default X5 processor) and the
in-model Pix2Struct input (`EagleVisionTower.expert_calls` + `EaglePix2StructExpert.make_patches`).
Both sides get the same decoded images (the parity test image at 640x480, one per batch element,
shifted so the elements differ), run alternately in fresh processes, ``--repeats`` timed calls
each (median). Checked: ``pixel_values`` bit-identical, Pix2Struct patches within the bound the
parity README documents for a re-implementation of that processor (1.1e-6 measured there; the
check allows 1e-5: the per-image mean/std are summed in float64 here, by numpy's float32
pairwise reduction there).

``--what x5``: the full-size X5 vision mixture's forward, one 1024 px image, float32 by default
(``--dtype``). Original side: the original `EagleLlamaForCausalLM` built from the rebuilt
original-format parity checkpoint (`eagle_hf.testing.parity.cached_original_checkpoint`, the
``public-x5`` fixture), every tower answered offline from the architecture the fixture records
(`answer_hub_offline`), every weight from the checkpoint, then its
`MultiBackboneChannelConcatenationVisionTower` called on the pixel values: its own resizes and its
per-forward Pix2Struct processor round trip are part of what is timed. eagle-hf side: the same
checkpoint folder through ``AutoModelForImageTextToText.from_pretrained`` and its `EagleVisionTower`.
Both get the same pixel values (the fixture image through eagle-hf's processor, which is
bit-identical to the original's), build and load untimed, then ``--repeats`` timed forwards in
fresh processes alternating over ``--pairs``; printed: best time per side, the ratio, each expert's
block's max |difference| of the fused features and the workers' peak RSS.

The Hub is not reachable here, so on the original side `from_pretrained` of
``google/pix2struct-large`` is answered offline with ``Pix2StructImageProcessor()`` (its defaults are
that repository's preprocessor config: patch 16, max_patches 2048) and a T5 tokenizer the image-only
call never uses.
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


# --------------------------------------------------------------------------------------------------
# --what preprocessing

PATCH_ATOL = 1e-5


def register_original_packages(repo: str) -> None:
    """Lets the original's modules be imported from their files without running the packages'
    ``__init__.py`` (``eagle/__init__.py`` imports the whole LLaVA stack, ``eagle/model/__init__.py``
    every language model): the packages are registered as bare namespace modules."""
    import types

    for name in ("eagle", "eagle.model", "eagle.model.multimodal_encoder", "eagle.model.language_model",
                 "eagle.model.multimodal_projector"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(Path(repo, *name.split(".")))]
            sys.modules[name] = module


def offline_pix2struct_processor():
    """google/pix2struct-large's processor, offline: its preprocessor config's values are
    `Pix2StructImageProcessor`'s defaults; the T5 tokenizer is a stub the image-only call never uses."""
    from tokenizers import Tokenizer, models
    from transformers import Pix2StructImageProcessor, Pix2StructProcessor, T5TokenizerFast

    tok = T5TokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2},
                                                                      unk_token="<unk>")))
    return Pix2StructProcessor(Pix2StructImageProcessor(), tok)


def fixture_natives(fixture: dict) -> dict[str, str]:
    """{fixture tower name: eagle-hf expert name} by `eagle_hf.testing.parity.native_expert_name`
    (the one mapping; ``clip-448`` and ``openai/clip-vit-large-patch14-336`` are both ``clip``).
    Computed in eagle-hf's environment and handed to the original's workers, which cannot import it."""
    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from eagle_hf.testing.parity import native_expert_name

    return {e["name"]: native_expert_name(e["name"]) for e in fixture["outputs"]["experts"]}


def answer_hub_offline(fixture: dict, natives: dict[str, str]) -> None:
    """The original resolves every tower from the Hub at build time (CLIP, SAM and Pix2Struct with
    ``from_pretrained``, ConvNeXt through timm's pretrained config); no Hub is reachable here, so
    each is built from the architecture the fixture records, with the weights set afterwards from
    the checkpoint. ``natives``: `fixture_natives`. Runs in the original's venv (transformers 4.44,
    timm 0.9.11)."""
    import timm.models._builder
    import transformers

    def recorded(native: str) -> dict | None:  # the recorded architecture of the fixture's `native` expert
        return next((e["architecture"]["config"] for e in fixture["outputs"]["experts"]
                     if natives[e["name"]] == native), None)

    clip = recorded("clip")
    if clip is not None:
        clip_cfg = {k: clip[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "patch_size", "image_size", "hidden_act",
                                         "layer_norm_eps")}
        size = clip["image_size"]
        transformers.CLIPVisionConfig.from_pretrained = classmethod(
            lambda cls, *a, **k: transformers.CLIPVisionConfig(**clip_cfg))
        transformers.CLIPVisionModel.from_pretrained = classmethod(lambda cls, *a, **k: transformers.CLIPVisionModel(
            transformers.CLIPVisionConfig(**clip_cfg, attn_implementation=clip.get("attn_implementation", "sdpa"))))
        # openai/clip-vit-large-patch14-336's preprocessor_config.json values
        transformers.CLIPImageProcessor.from_pretrained = classmethod(lambda cls, *a, **k: transformers.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}))
    sam = recorded("sam")
    if sam is not None:
        transformers.SamModel.from_pretrained = classmethod(lambda cls, *a, **k: transformers.SamModel(
            transformers.SamConfig(vision_config=sam)))
        transformers.SamProcessor.from_pretrained = classmethod(lambda cls, *a, **k: transformers.SamProcessor(
            transformers.SamImageProcessor()))
    p2s = recorded("pix2struct")
    if p2s is not None:
        vision = {k: p2s[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "d_kv", "d_ff",
                                      "dense_act_fn", "layer_norm_eps", "patch_embed_hidden_size", "seq_len")}

        def pix2struct_model(cls, *a, **k):  # only .encoder is used: a one-layer text decoder keeps it small
            config = transformers.Pix2StructConfig(vision_config=vision, text_config=dict(
                num_layers=1, hidden_size=64, d_kv=16, d_ff=64, num_heads=4, vocab_size=64))
            config._attn_implementation = "eager"
            return transformers.Pix2StructForConditionalGeneration(config)

        transformers.Pix2StructForConditionalGeneration.from_pretrained = classmethod(pix2struct_model)
        transformers.AutoProcessor.from_pretrained = classmethod(lambda cls, *a, **k: offline_pix2struct_processor())
    # timm would download convnext_xxlarge's pretrained weights; the checkpoint sets them instead.
    timm.models._builder.load_pretrained = lambda *a, **k: None


def load_streaming(model, path: Path) -> None:
    """The checkpoint's tensors copied into the model one at a time (the X5 checkpoint is 9 GB:
    a whole state dict beside the model would double the memory); every key must match."""
    import torch
    from safetensors import safe_open

    own = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(set(own) - keys), sorted(keys - set(own))
        if missing or unexpected:
            raise SystemExit(f"checkpoint does not match the original model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        with torch.no_grad():
            for key in keys:
                own[key].copy_(f.get_tensor(key))


def build_original_model(repo: str, fixture: dict, natives: dict[str, str], checkpoint: Path):
    """(model, config, mm_utils): the original `EagleLlamaForCausalLM` (its files, its transformers)
    built from the rebuilt original-format checkpoint's ``config.json`` with every tower answered
    offline (`answer_hub_offline`), then every weight from the checkpoint, in eval mode."""
    import importlib

    answer_hub_offline(fixture, natives)
    register_original_packages(repo)
    eagle_llama = importlib.import_module("eagle.model.language_model.eagle_llama")
    mm_utils = importlib.import_module("eagle.mm_utils")
    config = eagle_llama.EagleConfig(**json.loads((checkpoint / "config.json").read_text()))
    model = eagle_llama.EagleLlamaForCausalLM(config)
    tower = model.get_model().get_vision_tower()
    if not tower.is_loaded:
        tower.load_model()  # what the original's load_pretrained_model does for a delay-loaded tower
    load_streaming(model, checkpoint / "model.safetensors")
    return model.eval(), config, mm_utils


def _original_modules(repo: str):
    register_original_packages(repo)
    import importlib

    mm_utils = importlib.import_module("eagle.mm_utils")
    convnext = importlib.import_module("eagle.model.multimodal_encoder.convnext_encoder")
    pix2struct = importlib.import_module("eagle.model.multimodal_encoder.pix2struct_encoder")
    return mm_utils, convnext, pix2struct


def original_preprocessing(repo: str, dtype=None):
    """(preprocess(images) -> (pixel_values, flattened_patches)) with the original's own code.
    ``dtype``: the tower's (``model.to(dtype)``); its Pix2Struct input is then cast to it, as there."""
    import torch
    from transformers import CLIPImageProcessor

    mm_utils, convnext, pix2struct = _original_modules(repo)
    # The X5 mixture's image processor is its ConvNeXt tower's (`self.image_processor =
    # convnext_vision_tower.image_processor`), built in ConvNextVisionTower.load_model like this:
    image_processor = CLIPImageProcessor(**convnext.cfg)
    image_processor.size = 1024
    image_processor.crop_size = {"height": 1024, "width": 1024}
    model_cfg = argparse.Namespace(image_aspect_ratio="pad")

    class RecordingEncoder(torch.nn.Module):
        """Stands in for the Pix2Struct encoder: records its input, returns one dummy channel."""

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # the tower reads dtype/device from it
            self.seen = None

        def forward(self, flattened_patches, attention_mask):
            self.seen = flattened_patches
            return argparse.Namespace(last_hidden_state=flattened_patches[:, :, :1])

    encoder = RecordingEncoder()

    class Offline:  # google/pix2struct-large is not reachable: its processor config's values
        @staticmethod
        def model(*a, **k):
            return argparse.Namespace(encoder=encoder)

        @staticmethod
        def processor(*a, **k):
            return offline_pix2struct_processor()

    pix2struct.Pix2StructForConditionalGeneration.from_pretrained = Offline.model
    pix2struct.AutoProcessor.from_pretrained = Offline.processor
    # The arguments MultiBackboneChannelConcatenationVisionTower gives its `pix2struct-1024` tower.
    tower_args = argparse.Namespace(do_resize=True, de_normalize=True, mm_vision_select_layer=-2,
                                    input_image_size=1024, freeze_vision=False)
    tower = pix2struct.Pix2StructLargeVisionTower("pix2struct-large", tower_args).eval()
    if dtype is not None:
        tower.to(dtype)

    def preprocess(images):
        pixel_values = mm_utils.process_images(images, image_processor, model_cfg)
        tower(pixel_values if dtype is None else pixel_values.to(dtype))
        return pixel_values, encoder.seen

    return preprocess


def eagle_hf_preprocessing():
    """The same with eagle-hf: its processor, then the in-model Pix2Struct input of the X5 tower."""
    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from eagle_hf import EagleVisionTower
    from eagle_hf.modeling.configuration_eagle import EagleVisionConfig
    from eagle_hf.modeling.registry import get_expert
    from eagle_hf.processing import EagleImageProcessor
    from eagle_hf.testing.parity import expert_patches

    processor = EagleImageProcessor()  # the X5 processor's values are the defaults
    # Patching depends only on the expert's patch/input settings (full size); the encoder width is
    # irrelevant here, so the tiny one keeps the build cheap.
    entry = get_expert("pix2struct")
    full = entry.config_class(**entry.preset("full_size"))
    pix_cfg = dict(entry.preset("tiny"), **{k: getattr(full, k) for k in
                   ("patch_size", "max_patches", "patch_embed_hidden_size", "input_size")})
    tower = EagleVisionTower(EagleVisionConfig(expert_order=["pix2struct"], image_size=full.input_size,
                                               pix2struct_config=pix_cfg)).eval()

    def preprocess(images):
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        return pixel_values, expert_patches(tower, pixel_values, "pix2struct")

    return preprocess


def preprocessing_worker(args) -> dict:
    import statistics

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    images = [Image.open(path) for path in json.loads(args.config)["images"]]
    for image in images:
        image.load()  # decoding is not part of preprocessing
    preprocess = original_preprocessing(args.original_repo) if args.side == "original" else eagle_hf_preprocessing()
    times, cpu_times = [], []
    with torch.no_grad():
        pixel_values, patches = preprocess(images)  # warm-up
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            pixel_values, patches = preprocess(images)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    torch.save({"pixel_values": pixel_values.contiguous(), "patches": patches.float().contiguous()}, args.save)
    return {"side": args.side, "seconds": statistics.median(times), "cpu_seconds": statistics.median(cpu_times),
            "times": times, "torch": torch.__version__}


def make_images(tmp: str, count: int) -> list[str]:
    """The parity test image at 640x480, rolled sideways by a different amount per batch element."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from eagle_hf.testing.parity import draw_test_image

    base = np.asarray(draw_test_image(640, 480))
    paths = []
    for i in range(count):
        path = f"{tmp}/image{i}.png"
        Image.fromarray(np.roll(base, 53 * i, axis=1)).save(path)
        paths.append(path)
    return paths


def compare_preprocessing(tmp: str) -> dict:
    import torch

    a, b = torch.load(f"{tmp}/original.pt"), torch.load(f"{tmp}/eagle_hf.pt")
    out = {"pixel_values_equal": bool(a["pixel_values"].shape == b["pixel_values"].shape
                                      and torch.equal(a["pixel_values"], b["pixel_values"])),
           "pixel_values_max_abs_diff": float((a["pixel_values"] - b["pixel_values"]).abs().max())
           if a["pixel_values"].shape == b["pixel_values"].shape else float("nan"),
           "patches_shape": list(b["patches"].shape)}
    out["patches_max_abs_diff"] = (float((a["patches"] - b["patches"]).abs().max())
                                   if a["patches"].shape == b["patches"].shape else float("nan"))
    out["patches_within_bound"] = out["patches_max_abs_diff"] <= PATCH_ATOL
    return out


def run_pairs(args, config: str, tmp: str) -> dict:
    """Alternate fresh worker processes (original, eagle-hf, original, ...); times per side."""
    pythons = {"original": args.original_python, "eagle_hf": sys.executable}
    times = {"original": [], "eagle_hf": []}
    args.cpu_times = {"original": [], "eagle_hf": []}  # process CPU time, where the worker reports it
    args.peak_rss = {"original": [], "eagle_hf": []}  # GiB, where the worker reports it
    for _ in range(args.pairs):
        for side in ("original", "eagle_hf"):
            cmd = [pythons[side], str(HERE), "--what", args.what, "--side", side, "--config", config,
                   "--save", f"{tmp}/{side}.pt", "--original-repo", args.original_repo,
                   "--parity-dir", args.parity_dir or "", "--threads", str(args.threads), "--device", args.device,
                   "--dtype", args.dtype, "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{side} worker failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            times[side].append(row["seconds"])
            if "cpu_seconds" in row:
                args.cpu_times[side].append(row["cpu_seconds"])
            if "peak_rss_gib" in row:
                args.peak_rss[side].append(row["peak_rss_gib"])
            print(f"# {side} ({row['torch']}): {row['seconds']:.4f} s"
                  + (f" (CPU {row['cpu_seconds']:.4f} s)" if "cpu_seconds" in row else ""), flush=True)
    return times


# --------------------------------------------------------------------------------------------------
# --what x5


def x5_worker(args) -> dict:
    """One side's full-size X5 vision mixture on the fixture's pixel values: the original's
    `MultiBackboneChannelConcatenationVisionTower` (its resizes and its per-forward Pix2Struct
    processor round trip included) or eagle-hf's `EagleVisionTower`, both loaded from the same
    original-format checkpoint; ``--repeats`` timed forwards after an untimed build and load."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    config = json.loads(args.config)
    dtype = getattr(torch, args.dtype)
    pixel_values = torch.load(config["pixels"]).to(dtype)
    if args.side == "original":
        fixture = json.loads(Path(config["fixture"]).read_text())
        model, _, _ = build_original_model(args.original_repo, fixture, config["natives"], Path(config["checkpoint"]))
        tower = model.to(dtype).get_model().get_vision_tower()

        def forward(x):
            return tower(x)
    else:
        sys.path.insert(0, str(HERE.parents[2] / "src"))
        from transformers import AutoModelForImageTextToText

        import eagle_hf  # noqa: F401  (registers the Auto classes)

        model = AutoModelForImageTextToText.from_pretrained(config["checkpoint"], dtype=dtype).eval()
        tower = model.model.vision_tower

        def forward(x):
            return tower(x).last_hidden_state
    times = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = forward(pixel_values)
            times.append(time.perf_counter() - start)
    torch.save(out.float().contiguous(), args.save)
    return {"side": args.side, "seconds": min(times), "times": times, "torch": torch.__version__,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main_x5(args) -> None:
    import torch

    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from eagle_hf.processing import EagleImageProcessor
    from eagle_hf.testing.parity import cached_original_checkpoint, find_parity_dir, fixture_image, load_fixture

    parity = Path(args.parity_dir) if args.parity_dir else find_parity_dir()
    if parity is None:
        raise SystemExit("shared/parity (detweights.py) not found; pass --parity-dir")
    fixture_path = parity / "public-x5.json"
    fixture = load_fixture(fixture_path)
    checkpoint = cached_original_checkpoint(fixture_path)  # rebuilt from detweights once, then cached
    with tempfile.TemporaryDirectory() as tmp:
        # Both sides get these (the original's own process_images gives the same bits: --what preprocessing).
        pixels = EagleImageProcessor()(images=fixture_image(fixture), return_tensors="pt")["pixel_values"]
        torch.save(pixels, f"{tmp}/pixels.pt")
        config = json.dumps({"fixture": str(fixture_path), "checkpoint": str(checkpoint), "pixels": f"{tmp}/pixels.pt",
                             "natives": fixture_natives(fixture)})
        times = run_pairs(args, config, tmp)
        a, b = torch.load(f"{tmp}/original.pt"), torch.load(f"{tmp}/eagle_hf.pt")
    diffs = {}
    for entry in fixture["outputs"]["experts"]:
        start = entry["channel_offset"]
        block = slice(start, start + entry["channels"])
        diffs[entry["name"]] = float((a[..., block] - b[..., block]).abs().max())
    best = {k: min(v) for k, v in times.items()}
    ratio = best["original"] / best["eagle_hf"]
    print(f"X5 vision mixture forward, full size, 1 image, {args.dtype}, {args.threads} thread(s): original "
          f"{best['original']:.1f} s, eagle-hf {best['eagle_hf']:.1f} s, eagle-hf is {ratio:.2f}x faster; "
          "max|diff| of the fused features per expert block: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    print(json.dumps({"benchmark": "side_by_side", "what": "x5", "times_s": times, "best_s": best,
                      "speedup_eagle_hf": ratio, "max_abs_diff_per_expert": diffs, "shape": list(b.shape),
                      "peak_rss_gib": args.peak_rss, "threads": args.threads, "dtype": args.dtype,
                      "pairs": args.pairs, "repeats": args.repeats}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=["sam", "preprocessing", "x5"], default="sam")
    p.add_argument("--original-python", help="python of the venv built by setup_env.sh")
    p.add_argument("--original-repo", help="checkout of NVlabs/EAGLE")
    p.add_argument("--tiny", action="store_true", help="tiny SAM config (smoke run)")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--parity-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per worker (preprocessing: median; x5: best)")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        workers = {"preprocessing": preprocessing_worker, "x5": x5_worker, "sam": worker}
        print(json.dumps(workers[args.what](args)))
        return
    if not (args.original_python and args.original_repo):
        p.error("--original-python and --original-repo are required (build them with setup_env.sh)")
    if args.what == "preprocessing":
        return main_preprocessing(args)
    if args.what == "x5":
        return main_x5(args)
    if args.parity_dir is None:
        sys.path.insert(0, str(HERE.parents[2] / "src"))
        from eagle_hf.testing.parity import find_parity_dir

        found = find_parity_dir()
        if found is None:
            p.error("shared/parity (detweights.py) not found; pass --parity-dir")
        args.parity_dir = str(found)
    config = json.dumps(sam_config(args.tiny))
    with tempfile.TemporaryDirectory() as tmp:
        times = run_pairs(args, config, tmp)
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


def main_preprocessing(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = json.dumps({"images": make_images(tmp, args.batch_size)})
        times = run_pairs(args, config, tmp)
        check = compare_preprocessing(tmp)
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in args.cpu_times.items()}
    ratio, cpu_ratio = best["original"] / best["eagle_hf"], best_cpu["original"] / best_cpu["eagle_hf"]
    rate = {k: args.batch_size / v for k, v in best.items()}
    print(f"preprocessing, {args.batch_size} x 640x480 -> X5 inputs, {args.threads} thread(s): original "
          f"{best['original'] * 1e3:.1f} ms ({rate['original']:.1f} img/s), eagle-hf {best['eagle_hf'] * 1e3:.1f} ms "
          f"({rate['eagle_hf']:.1f} img/s), eagle-hf is {ratio:.2f}x faster (CPU time: {best_cpu['original'] * 1e3:.1f} "
          f"vs {best_cpu['eagle_hf'] * 1e3:.1f} ms, {cpu_ratio:.2f}x); pixel_values bit-identical: "
          f"{check['pixel_values_equal']}; Pix2Struct patches max|diff| {check['patches_max_abs_diff']:.2e} "
          f"(bound {PATCH_ATOL:g})")
    print(json.dumps({"benchmark": "side_by_side", "what": "preprocessing", "batch_size": args.batch_size,
                      "image": "parity test image 640x480", "times_s": times, "best_s": best,
                      "cpu_times_s": args.cpu_times, "best_cpu_s": best_cpu, "img_per_s": rate,
                      "speedup_eagle_hf": ratio, "cpu_speedup_eagle_hf": cpu_ratio, **check,
                      "threads": args.threads, "repeats": args.repeats}))
    if not (check["pixel_values_equal"] and check["patches_within_bound"]):
        raise SystemExit("outputs differ beyond the bounds (see above)")


if __name__ == "__main__":
    main()

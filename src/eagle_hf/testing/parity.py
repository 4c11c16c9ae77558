"""Number-for-number checks against the original NVlabs EAGLE code.

The reference numbers live in ``shared/parity/<case>.json`` (format: ``shared/parity/README.md``):
outputs of the original model whose every weight is ``detweights.fill(key, shape)``. This module
rebuilds such an original-format checkpoint, redraws the test image, and compares a model stage
by stage (uint8 image, pixel values, each expert, fused features, projector, last logits), so the
first failing stage says where an implementation diverges.

Nothing here knows the public cases: expert order, channel offsets, image size, token ids and
sequence layout all come from the fixture and the model's config.
"""

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..atomic import atomic_folder
from ..convert.checkpoint_io import nbytes, plan_shards, shard_names, write_index, write_safetensors
from ..dtypes import parse_dtype

if TYPE_CHECKING:  # PIL is imported where an image is drawn, not at module import
    import PIL.Image

IMAGE_TOKEN_INDEX = -200  # the original's sentinel for "image features go here"

# Per-stage bounds of shared/parity/README.md: |got - expected| <= atol + rtol * |expected|.
DEFAULT_BOUNDS = {
    "default": (1e-4, 1e-4),
    # Pix2Struct's unscaled T5 attention amplifies float noise ~1e3-1e4x (README "Why Pix2Struct is looser").
    "pix2struct": (2e-2, 1e-2),
    "logits": (5e-4, 5e-4),
}

# bfloat16 against the float32 fixtures, per case: twice the original code's own bf16-vs-fp32 error,
# measured with `benchmarks/original/bf16_error.py` (the original EagleLlamaForCausalLM, transformers
# 4.44, `model.to(torch.bfloat16)`, max |bf16 - fp32| over all elements of each stage, 2026-12-01;
# the expert blocks are the fused features' channel slices). Twice, because eagle-hf rounds at
# other places than the original (SDPA kernels, float32 normalisation tables) with errors of the
# same size; an error larger than the original's own bf16 error times two is not bf16 rounding.
# Absolute bounds (rtol 0): bf16 errors scale with each stage's magnitude, so each stage and expert
# has its own. In X5, Pix2Struct's unscaled attention makes the original's own bf16 output barely
# related to its fp32 one (error 4.26 where values reach 4.53), so that bound is near-vacuous by
# derivation: bf16 is not a faithful mode for the Pix2Struct expert, in the original either.
BF16_BOUNDS = {
    # public-clip: features 0.472 (values up to 20.7), projector 0.221 (up to 10.9), logits 0.0387
    # (up to 3.41), argmax unchanged.
    "public-clip": {"features": (2 * 0.472, 0.0), "projector": (2 * 0.221, 0.0), "logits": (2 * 0.0387, 0.0)},
    # public-x5 (2 threads): CLIP 0.489 (up to 21.1), ConvNeXt 0.102 (5.90), SAM 0.0806 (5.02), EVA
    # 0.773 (26.6), Pix2Struct 4.26 (4.53), projector 1.20 (8.15), logits 0.0869 (3.30), argmax unchanged;
    # Pix2Struct's input patches 0.0181 (`--patches-only`: the bf16-cast pixels, de-normalised).
    "public-x5": {"patches": (2 * 0.0181, 0.0), "expert clip": (2 * 0.489, 0.0), "expert convnext": (2 * 0.102, 0.0),
                  "expert sam": (2 * 0.0806, 0.0), "expert eva": (2 * 0.773, 0.0),
                  "features": (2 * 0.773, 0.0), "pix2struct": (2 * 4.26, 0.0),
                  "projector": (2 * 1.20, 0.0), "logits": (2 * 0.0869, 0.0)},
}


# ----------------------------------------------------------------------------------------------
# Fixtures


def find_parity_dir(start: str | os.PathLike | None = None) -> Path | None:
    """``shared/parity``: ``$EAGLE_HF_SHARED_DIR`` (the shared folder or its ``parity``
    sub-folder), else the first ``shared/parity`` found walking up from ``start`` (default: this
    package and the working directory; CI clones the repo next to ``shared/``)."""
    env = os.environ.get("EAGLE_HF_SHARED_DIR")
    if env:
        for candidate in (Path(env) / "parity", Path(env)):
            if (candidate / "detweights.py").is_file():
                return candidate
    starts = [Path(start)] if start is not None else [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for origin in starts:
        for folder in (origin, *origin.parents):
            candidate = folder / "shared" / "parity"
            if (candidate / "detweights.py").is_file():
                return candidate
    return None


def list_fixtures(parity_dir: str | os.PathLike) -> list[Path]:
    """Every case file of a parity folder (``prompts.json`` is prompt data, not a case)."""
    return sorted(p for p in Path(parity_dir).glob("*.json") if p.name != "prompts.json")


def load_fixture(fixture: str | os.PathLike | dict) -> dict:
    if isinstance(fixture, dict):
        return fixture
    data = json.loads(Path(fixture).read_text())
    data.setdefault("_path", str(Path(fixture).resolve()))
    return data


def load_detweights(parity_dir: str | os.PathLike):
    """The ``detweights`` module of a parity folder, imported from its file."""
    path = Path(parity_dir) / "detweights.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; set EAGLE_HF_SHARED_DIR to the shared folder")
    name = f"_eagle_detweights_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fixture_dir(fixture: dict) -> Path | None:
    return Path(fixture["_path"]).parent if "_path" in fixture else None


def _fill_for(fixture: dict, fill: Callable | None) -> Callable:
    if fill is not None:
        return fill
    folder = _fixture_dir(fixture) or find_parity_dir()
    if folder is None:
        raise FileNotFoundError("cannot locate detweights.py: pass fill= or the fixture's path")
    return load_detweights(folder).fill


# ----------------------------------------------------------------------------------------------
# Original-format checkpoints


def build_original_checkpoint(fixture: str | os.PathLike | dict, out_dir: str | os.PathLike,
                              dtype: torch.dtype | str = torch.float32, shards: int = 1, fmt: str = "safetensors",
                              aliases: str = "all", drop: Callable[[str], bool] | None = None,
                              extra: dict[str, torch.Tensor] | None = None, fill: Callable | None = None,
                              progress: bool = False) -> Path:
    """Write the original-format checkpoint of a fixture: ``config.json`` from the manifest and
    every manifest key filled by ``detweights.fill``, in ``shards`` files.

    ``aliases``: ``"all"`` writes every key; ``"first"`` leaves out keys marked ``alias_of``
    (what older transformers versions saved); ``"none"`` also leaves out the tables they alias
    (EVA-02's RoPE tables, which are derived). ``drop(key)`` leaves out more keys and ``extra``
    adds tensors (both for testing refusals). Safetensors files are written tensor by tensor
    (the X5 case is 9 GB in float32); a ``.bin`` shard is assembled in memory, as torch.save needs.
    """
    fixture = load_fixture(fixture)
    fill = _fill_for(fixture, fill)
    dtype = parse_dtype(dtype)
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    if aliases not in ("all", "first", "none"):
        raise ValueError(f"aliases must be 'all', 'first' or 'none', got {aliases!r}")
    entries = fixture["manifest"]["state_dict"]["keys"]
    alias_targets = {e["alias_of"] for e in entries if e.get("alias_of")}
    specs, values = [], {}
    for entry in entries:
        key = entry["key"]
        if aliases != "all" and entry.get("alias_of"):
            continue
        if aliases == "none" and key in alias_targets:
            continue
        if drop is not None and drop(key):
            continue
        specs.append((key, tuple(int(s) for s in entry["shape"]), dtype))
    for key, tensor in (extra or {}).items():
        specs.append((key, tuple(tensor.shape), tensor.dtype))
        values[key] = tensor

    shapes = {k: s for k, s, _ in specs}

    def produce(name: str) -> torch.Tensor:
        return values[name] if name in values else fill(name, shapes[name], dtype)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(fixture["manifest"]["config.json"])
    if dtype != torch.float32:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    planned = plan_shards(specs, num_shards=shards)
    names = shard_names(len(planned), fmt)
    bar = _progress(sum(nbytes(s, d) for _, s, d in specs), f"building {out.name}", progress)
    for shard, name in zip(planned, names):
        if fmt == "safetensors":
            write_safetensors(out / name, shard, produce, on_tensor=lambda _, n: bar.update(n))
        else:
            state = {}
            for key, shape, tensor_dtype in shard:
                state[key] = produce(key)
                bar.update(nbytes(shape, tensor_dtype))
            torch.save(state, out / name)
            del state
    bar.close()
    if len(planned) > 1:
        write_index(out, planned, names, fmt)
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled)


def default_cache_dir() -> Path:
    env = os.environ.get("EAGLE_HF_CACHE")
    return Path(env) / "parity" if env else Path.home() / ".cache" / "eagle-hf" / "parity"


def cached_original_checkpoint(fixture_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                               progress: bool = False, **variant) -> Path:
    """`build_original_checkpoint` once per (fixture, detweights, variant), kept in a cache
    folder keyed by their hashes; a build interrupted half-way is never reused."""
    fixture_path = Path(fixture_path)
    digest = hashlib.sha256(fixture_path.read_bytes())
    detweights = fixture_path.parent / "detweights.py"
    if detweights.is_file():
        digest.update(detweights.read_bytes())
    for key in sorted(variant):
        if key in ("drop", "extra", "fill"):
            raise ValueError(f"{key}= cannot be cached; call build_original_checkpoint directly")
        digest.update(f"{key}={variant[key]!s};".encode())
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{fixture_path.stem}-{digest.hexdigest()[:16]}"
    if (target / ".complete").is_file():
        return target
    # Built in a temp sibling and published whole; a killed build's temp folder (up to 9 GB) is
    # removed by the next build of the same entry.
    with atomic_folder(target, keep_existing=False) as tmp:
        build_original_checkpoint(fixture_path, tmp, progress=progress, **variant)
        record = {"fixture": str(fixture_path), **{k: str(v) for k, v in variant.items()}}
        (tmp / ".complete").write_text(json.dumps(record))
    return target


# ----------------------------------------------------------------------------------------------
# Test image


def draw_test_image(width: int, height: int) -> "PIL.Image.Image":
    """The parity test image (README "Test image recipe"), integer arithmetic only."""
    from PIL import Image

    w, h = int(width), int(height)
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    img = np.stack([255 * x // (w - 1), 255 * y // (h - 1), 255 * (x + y) // (w + h - 2)], axis=-1)
    checker = (x >= w // 16) & (x < w // 16 + w // 4) & (y >= h // 16) & (y < h // 16 + h // 4)
    img[checker] = np.where(((x // 8) + (y // 8)) % 2 == 0, 255, 0)[checker][:, None]
    stripes = (x >= w // 2) & (x < w - w // 16) & (y >= h // 2) & (y < h - h // 16)
    yellow = ((x + y) // 12) % 2 == 0
    img[stripes & yellow] = (255, 255, 0)
    img[stripes & ~yellow] = (0, 0, 128)
    for (x0, y0, x1, y1), colour in (
        ((w * 5 // 8, h // 8, w * 7 // 8, h * 3 // 8), (220, 20, 60)),
        ((w // 8, h * 5 // 8, w * 3 // 8, h * 7 // 8), (30, 60, 200)),
        ((0, h // 2 - 2, w - 1, h // 2 + 1), (255, 255, 255)),
    ):
        img[y0 : y1 + 1, x0 : x1 + 1] = colour
    return Image.fromarray(img.astype(np.uint8), mode="RGB")


def fixture_image(fixture: dict) -> "PIL.Image.Image":
    """The fixture's test image, checked against its recorded checksum."""
    spec = fixture["inputs"]["image"]
    image = draw_test_image(spec["width"], spec["height"])
    checksum = int(np.asarray(image, dtype=np.int64).sum())
    if checksum != spec["checksum_sum_of_uint8"]:
        raise ValueError(f"test image {spec['width']}x{spec['height']} has checksum {checksum}, the fixture "
                         f"records {spec['checksum_sum_of_uint8']}: the recipe implementation is wrong")
    return image


# ----------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class StageResult:
    """Outcome of one stage. ``worst_ratio`` = max |got - expected| / (atol + rtol |expected|)
    over the checked values (> 1 fails); ``max_abs_error`` is over the same values."""

    name: str
    passed: bool
    max_abs_error: float = 0.0
    worst_ratio: float = 0.0
    atol: float | None = None
    rtol: float | None = None
    checked: int = 0
    detail: str = ""

    def line(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        bound = f"atol {self.atol:.0e} rtol {self.rtol:.0e}" if self.atol is not None else "exact"
        return (f"{status} {self.name:<44} max|err| {self.max_abs_error:.3e}  worst/bound {self.worst_ratio:6.3f}  "
                f"({bound}, {self.checked} values){'  ' + self.detail if self.detail else ''}")


@dataclass
class ParityReport:
    case: str
    stages: list[StageResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    @property
    def first_failure(self) -> StageResult | None:
        return next((s for s in self.stages if not s.passed), None)

    def __getitem__(self, name: str) -> StageResult:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def max_errors(self) -> dict[str, float]:
        return {s.name: s.max_abs_error for s in self.stages}

    def format(self) -> str:
        head = f"parity {self.case}: {'PASSED' if self.passed else 'FAILED at ' + self.first_failure.name}"
        return "\n".join([head, *("  " + s.line() for s in self.stages)])

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(self.format())


def _as_float64(tensor) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().to("cpu", torch.float64).numpy()
    return np.asarray(tensor, dtype=np.float64)


def compare_stage(name: str, tensor, entry: dict, atol: float, rtol: float,
                  channel_bounds: Iterable[tuple[int, int, float, float]] = (),
                  stats_bounds: tuple[float, float] | None = None) -> StageResult:
    """Compare a tensor with a fixture entry: shape, finiteness, every stored sample and the
    stored mean/std (population), each within ``atol + rtol * |expected|``.

    ``channel_bounds``: (start, end, atol, rtol) for samples whose last index lies in
    [start, end) (the fused channels of a loosely bounded expert); ``stats_bounds`` the bound of
    the mean/std (default: ``atol``/``rtol``).
    """
    got = _as_float64(tensor)
    expected_shape = tuple(entry["shape"])
    if got.shape != expected_shape:
        return StageResult(name, False, math.inf, math.inf, atol, rtol, 0,
                           f"shape {got.shape} != fixture {expected_shape}")
    if not np.isfinite(got).all():
        return StageResult(name, False, math.inf, math.inf, atol, rtol, 0, "non-finite values")
    indices = np.asarray(entry.get("indices", []), dtype=np.int64).reshape(-1, got.ndim)
    expected = np.asarray(entry.get("values", []), dtype=np.float64)
    values = got[tuple(indices.T)] if len(indices) else np.zeros(0)
    a = np.full(len(expected), atol)
    r = np.full(len(expected), rtol)
    for start, end, c_atol, c_rtol in channel_bounds:
        inside = (indices[:, -1] >= start) & (indices[:, -1] < end) if len(indices) else np.zeros(0, bool)
        a[inside], r[inside] = c_atol, c_rtol
    s_atol, s_rtol = stats_bounds or (atol, rtol)
    for stat, value in (("mean", got.mean()), ("std", got.std())):
        values = np.append(values, value)
        expected = np.append(expected, entry[stat])
        a, r = np.append(a, s_atol), np.append(r, s_rtol)
    err = np.abs(values - expected)
    ratio = err / (a + r * np.abs(expected))
    worst = int(np.argmax(ratio))
    detail = ""
    if ratio[worst] > 1:
        where = "mean" if worst == len(err) - 2 else "std" if worst == len(err) - 1 else f"at {indices[worst].tolist()}"
        detail = f"worst {where}: got {values[worst]:.7g}, expected {expected[worst]:.7g}"
    return StageResult(name, bool(ratio.max() <= 1), float(err.max()), float(ratio.max()), atol, rtol,
                       len(err), detail)


def _join(detail: str, more: str) -> str:
    return f"{detail}; {more}" if detail else more


def _exact(name: str, ok: bool, detail: str = "", error: float = 0.0) -> StageResult:
    return StageResult(name, bool(ok), float(error), 0.0 if ok else math.inf, None, None, 1, "" if ok else detail)


# ----------------------------------------------------------------------------------------------
# Model-side helpers


def native_expert_name(original: str) -> str:
    """Native expert of an original tower name (``clip-448`` -> ``clip``, single-CLIP towers -> ``clip``)."""
    from ..convert.legacy_eagle_llama import ORIGINAL_TOWERS, is_single_clip

    if original in ORIGINAL_TOWERS:
        return ORIGINAL_TOWERS[original][0]
    if is_single_clip(original):
        return "clip"
    raise ValueError(f"fixture expert {original!r} is not an original EAGLE tower ({', '.join(ORIGINAL_TOWERS)})")


def expand_input_ids(input_ids: Iterable[int], config) -> torch.Tensor:
    """The original's ``-200`` sentinel -> ``image_seq_length`` copies of the image token id."""
    out = []
    for token in input_ids:
        out.extend([config.image_token_id] * config.image_seq_length if token == IMAGE_TOKEN_INDEX else [token])
    return torch.tensor([out], dtype=torch.long)


def image_processor_for_config(config):
    """The image processor an original (or native) config implies: the shared input size,
    the normalisation the experts were trained with, and padding to a square for
    ``image_aspect_ratio == "pad"``."""
    from ..convert import image_processor_kwargs
    from ..processing import EagleImageProcessor

    return EagleImageProcessor(**image_processor_kwargs(config))


def square_uint8(processor, image) -> np.ndarray:
    """The processor's square, resized uint8 image (HWC) before rescaling and normalisation."""
    out = processor.square_uint8(image)
    return np.asarray(out, dtype=np.uint8)


def expert_patches(tower, pixel_values: torch.Tensor, name: str) -> torch.Tensor:
    """The flattened patches expert ``name`` (one with ``make_patches``: Pix2Struct) makes inside the
    tower's forward: from the input and ``pixel_affine`` that `expert_calls` hands it."""
    x, extra = tower.expert_calls(pixel_values.to(tower.dtype))[name]
    return tower.experts[name].make_patches(x, extra.get("pixel_affine"))[0]


def _load_model(model_or_dir, dtype):
    from transformers import AutoModelForImageTextToText

    import eagle_hf  # noqa: F401  (registers the Auto classes)

    if isinstance(model_or_dir, torch.nn.Module):
        return model_or_dir
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return AutoModelForImageTextToText.from_pretrained(model_or_dir, **kwargs)


def _load_processor(model_or_dir, model, processor):
    if processor is not None:
        return processor
    if not isinstance(model_or_dir, torch.nn.Module) and (Path(model_or_dir) / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(model_or_dir)
    return image_processor_for_config(model.config)


def run_parity(fixture_path: str | os.PathLike | dict, model_or_dir, image_processor=None,
               dtype: torch.dtype | str | None = None, bounds: dict[str, tuple[float, float]] | None = None,
               check_argmax: bool = True, full_forward: bool = False) -> ParityReport:
    """Compare a model with a fixture, stage by stage, and return the report (it does not raise).

    ``model_or_dir``: a loaded model, an original checkpoint folder or a converted one (loaded
    with the stock Auto classes). ``image_processor``: default the folder's saved one, else the
    one `image_processor_for_config` derives. ``bounds`` overrides `DEFAULT_BOUNDS` entries
    (e.g. loose ones for half precision). ``full_forward`` also runs the plain
    ``model(input_ids, pixel_values)`` call and checks its logits (one more vision forward).
    """
    fixture = load_fixture(fixture_path)
    given = bounds or {}
    bounds = {**DEFAULT_BOUNDS, **given}
    # Expert/fused features and the projector output take the "default" bound unless given their own.
    bounds.setdefault("features", bounds["default"])
    bounds.setdefault("projector", bounds["default"])
    report = ParityReport(fixture.get("case", Path(fixture.get("_path", "?")).stem))
    stages = report.stages
    outputs = fixture["outputs"]

    model = _load_model(model_or_dir, parse_dtype(dtype)).eval()
    processor = _load_processor(model_or_dir, model, image_processor)
    config = model.config
    vision_config = config.vision_config

    # 1. preprocessing
    image = fixture_image(fixture)
    stages.append(_exact("test image checksum", True))
    png_entry = outputs["pixel_values"].get("uint8_image_before_normalisation")
    folder = _fixture_dir(fixture)
    if png_entry and folder is not None and (folder / png_entry["file"]).is_file():
        from PIL import Image

        reference = np.asarray(Image.open(folder / png_entry["file"]).convert("RGB"), dtype=np.int16)
        square = square_uint8(processor, image).astype(np.int16)
        if square.shape != reference.shape:
            stages.append(_exact("uint8 square image", False, f"shape {square.shape} != PNG {reference.shape}"))
        else:
            diff = np.abs(square - reference)
            stages.append(_exact("uint8 square image", diff.max() == 0,
                                 f"{int((diff > 0).sum())} uint8 values differ (max {int(diff.max())})",
                                 float(diff.max())))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    stages.append(compare_stage("pixel values", pixel_values, outputs["pixel_values"], *bounds["default"]))

    # 2. experts, in the fixture's (= mm_vision_tower) order
    expert_entries = outputs["experts"]
    natives = [native_expert_name(e["name"]) for e in expert_entries]
    offsets, channels = vision_config.channel_offsets, vision_config.expert_channels
    layout_problems = []
    if list(vision_config.expert_order) != natives:
        layout_problems.append(f"expert order {list(vision_config.expert_order)} != fixture {natives}")
    tower = model.model.vision_tower
    for entry, native in zip(expert_entries, natives):
        if (offsets.get(native), channels.get(native)) != (entry["channel_offset"], entry["channels"]):
            layout_problems.append(f"{entry['name']}: offset/channels {offsets.get(native)}/{channels.get(native)} "
                                   f"!= fixture {entry['channel_offset']}/{entry['channels']}")
        size = getattr(tower.experts.get(native), "input_size", None)
        if entry.get("input_image_size") is not None and size != entry["input_image_size"]:
            layout_problems.append(f"{entry['name']}: input size {size} != fixture {entry['input_image_size']}")
    stages.append(_exact("expert order, offsets, input sizes", not layout_problems, "; ".join(layout_problems)))

    with torch.inference_mode():
        vision = tower(pixel_values, output_expert_features=True)
        fused = vision.last_hidden_state
        for entry, native in zip(expert_entries, natives):
            p2s = entry.get("pix2struct_processor_output", {}).get("flattened_patches")
            expert = tower.experts.get(native)
            if p2s is not None and hasattr(expert, "make_patches"):
                stages.append(compare_stage(f"{entry['name']} patches", expert_patches(tower, pixel_values, native), p2s,
                                            *bounds.get("patches", bounds["default"])))
        own_channels = []
        for entry, native in zip(expert_entries, natives):
            # A bound of the expert's own ("expert sam"), else Pix2Struct's loose one, else the features'.
            kind = f"expert {native}" if f"expert {native}" in bounds else (
                "pix2struct" if native == "pix2struct" else "features")
            block = vision.expert_features[native]
            stage = compare_stage(f"expert {entry['name']}", block, entry["features"], *bounds[kind])
            start = offsets.get(native, entry["channel_offset"])
            in_fused = fused[..., start : start + block.shape[-1]]
            if in_fused.shape != block.shape or not torch.equal(in_fused, block):
                stage.passed = False
                stage.detail = _join(stage.detail, "differs from its slice of the fused features")
            stages.append(stage)
            if kind != "features":
                own_channels.append((entry["channel_offset"], entry["channel_offset"] + entry["channels"],
                                    *bounds[kind]))
        has_loose = "pix2struct" in natives
        # Pix2Struct's noise reaches the projector through its channels; a measured bound wins.
        projector_bound = bounds["pix2struct" if has_loose and "projector" not in given else "projector"]
        stage = compare_stage("fused features", fused, outputs["fused_vision_features"], *bounds["features"],
                              channel_bounds=own_channels, stats_bounds=bounds["pix2struct"] if has_loose else None)
        if has_loose and stage.passed:
            stage.detail = "Pix2Struct channels and mean/std at the Pix2Struct bound"
        stages.append(stage)

        # 3. projector
        projector = model.model.multi_modal_projector
        projected = projector(fused.to(model.model.multi_modal_projector_dtype))
        stages.append(compare_stage("projector output", projected, outputs["projector_output"],
                                    *projector_bound))

        # 4. language model: last three logit rows
        ids = expand_input_ids(fixture["inputs"]["input_ids"], config)
        sequence = outputs.get("sequence", {})
        span = sequence.get("image_token_span")
        positions = (ids[0] == config.image_token_id).nonzero().flatten().tolist()
        layout_ok = ids.shape[1] == sequence.get("total_length", ids.shape[1]) and (
            span is None or (positions[:1] == [span[0]] and positions[-1] + 1 == span[1]))
        stages.append(_exact("spliced sequence layout", layout_ok,
                             f"length {ids.shape[1]} / image span {positions[:1]}..{positions[-1:]} vs fixture "
                             f"{sequence.get('total_length')} / {span}"))
        from ..modeling.modeling_eagle import EagleImageFeaturesOutput

        image_outputs = EagleImageFeaturesOutput(last_hidden_state=fused, pooler_output=list(projected))
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       mm_encoder_outputs={"image": image_outputs}).logits
        runs = [("", logits)]
        if full_forward:
            # One plain forward also returns its get_image_features() output: check all three.
            full = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values)
            suffix = " (full forward)"
            image = full.image_outputs
            stages.append(compare_stage("fused features" + suffix, image.last_hidden_state,
                                        outputs["fused_vision_features"], *bounds["features"],
                                        channel_bounds=own_channels,
                                        stats_bounds=bounds["pix2struct"] if has_loose else None))
            stages.append(compare_stage("projector output" + suffix, torch.stack(list(image.pooler_output)),
                                        outputs["projector_output"], *projector_bound))
            runs.append((suffix, full.logits))
        for suffix, out in runs:
            for entry in outputs["logits_last3"]["positions"]:
                pos = entry["sequence_position"]
                if pos >= out.shape[1]:
                    stages.append(_exact(f"logits @{pos}{suffix}", False, f"only {out.shape[1]} positions"))
                    continue
                row = out[0, pos]
                stage = compare_stage(f"logits @{pos}{suffix}", row, entry, *bounds["logits"])
                argmax = int(row.float().argmax())
                if check_argmax and argmax != entry["argmax"]:
                    stage.passed = False
                    stage.detail = _join(stage.detail, f"argmax {argmax} != {entry['argmax']}")
                stages.append(stage)
    return report

"""Original NVlabs EAGLE checkpoints: direct loading, conversion, and parity with the original code.

Every case file in ``shared/parity`` is rebuilt as an original-format checkpoint (cached between
runs, see `eagle_hf.testing.parity.default_cache_dir`), loaded directly and after ``eagle-hf convert``, and
compared stage by stage with the original's numbers. Cases over 4 GB (full mixtures such as X5:
9 GB, minutes of CPU, ~10 GB RAM) are marked slow and only run with ``-m slow`` or ``RUN_SLOW=1``.
The remaining tests use the smallest case or zero-filled variants of the cases' manifests
(loading and refusals need no meaningful values).
"""

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import eagle_hf  # noqa: F401  (registers the Auto classes)
from eagle_hf.cli import main as cli_main
from eagle_hf.convert import SourceCheckpoint, convert_original_checkpoint, infer_template
from eagle_hf.convert.checkpoint_io import CheckpointError, read_safetensors_header
from eagle_hf.modeling.expert_eva import eva_rope_table
from eagle_hf.testing.parity import (
    BF16_BOUNDS,
    build_original_checkpoint,
    cached_original_checkpoint,
    draw_test_image,
    find_parity_dir,
    list_fixtures,
    load_detweights,
    load_fixture,
    run_parity,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = find_parity_dir(REPO_ROOT)
SLOW_BYTES = 4 * 10**9  # float32 checkpoints above this are full-size mixes (minutes of CPU, > 9 GB RAM)

# Most conversions here have no tokenizer on purpose; the warning is asserted where it matters.
pytestmark = pytest.mark.filterwarnings("ignore:.*has no tokenizer files:UserWarning")

needs_fixtures = pytest.mark.skipif(PARITY_DIR is None, reason="shared/parity not found (set EAGLE_HF_SHARED_DIR)")


def _checkpoint_bytes(path: Path) -> int:
    return 4 * json.loads(path.read_text())["manifest"]["state_dict"]["num_elements"]


def _cases():
    if PARITY_DIR is None:
        return [pytest.param(None, marks=needs_fixtures, id="no-fixtures")]
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.slow, pytest.mark.full_size] if _checkpoint_bytes(p) > SLOW_BYTES else [])
            for p in list_fixtures(PARITY_DIR)]


def _small_case() -> Path:
    """The smallest case: the one the default (non-slow) tests build variants of."""
    if PARITY_DIR is None:
        pytest.skip("shared/parity not found (set EAGLE_HF_SHARED_DIR)")
    return min(list_fixtures(PARITY_DIR), key=_checkpoint_bytes)


def _mixture_case() -> Path:
    """A case whose towers include EVA (RoPE aliases) - only its manifest is used, zero-filled."""
    if PARITY_DIR is None:
        pytest.skip("shared/parity not found (set EAGLE_HF_SHARED_DIR)")
    for path in list_fixtures(PARITY_DIR):
        keys = json.loads(path.read_text())["manifest"]["state_dict"]["keys"]
        if any(k.get("alias_of") for k in keys):
            return path
    pytest.skip("no parity case with aliased EVA RoPE tables")


def _zeros(name, shape, dtype):
    return torch.zeros(shape, dtype=dtype)


def _convert_cli(src: Path, dst: Path, *extra: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert cli_main(["convert", str(src), str(dst), "--no-progress", *extra]) == 0


@pytest.fixture(autouse=True)
def _free_disk(tmp_path):
    """Checkpoints here are 0.6-9 GB each and pytest keeps its last three temp folders: delete a
    test's files when it ends (EAGLE_HF_KEEP_TMP=1 keeps them for inspection)."""
    yield
    if not os.environ.get("EAGLE_HF_KEEP_TMP"):
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """case path -> its rebuilt original checkpoint converted with the CLI (once per session)."""
    done = {}

    def get(case: Path) -> Path:
        if case not in done:
            dst = tmp_path_factory.mktemp("converted") / case.stem
            _convert_cli(cached_original_checkpoint(case), dst)
            done[case] = dst
        return done[case]

    yield get
    if not os.environ.get("EAGLE_HF_KEEP_TMP"):
        for folder in done.values():
            shutil.rmtree(folder.parent, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Parity with the original code, every case, both load paths


@pytest.mark.parametrize("case", _cases())
def test_parity_direct_loading(case):
    report = run_parity(case, cached_original_checkpoint(case))
    print(report.format())
    report.raise_if_failed()


@pytest.mark.slow  # full-size forwards in bf16: CLIP-L 4.4 min on the shared 2 cores; X5 is also full_size
@pytest.mark.parametrize("case", _cases())
def test_parity_bf16_within_twice_the_originals_own_bf16_error(case):
    """eagle-hf loaded directly in bf16 against the float32 fixture, every stage, with bounds derived
    from the original code's own bf16-vs-fp32 error on the same case (`BF16_BOUNDS`); pixel values
    stay exact."""
    assert case.stem in BF16_BOUNDS, f"no bf16 bounds measured for {case.stem}: run benchmarks/original/bf16_error.py"
    report = run_parity(case, cached_original_checkpoint(case), dtype=torch.bfloat16, bounds=BF16_BOUNDS[case.stem])
    print(report.format())
    report.raise_if_failed()
    errors = report.max_errors()
    # The bounds are not vacuous: bf16 does move every model stage (float32 lands within 1e-4).
    assert max(v for k, v in errors.items() if k.startswith("expert")) > 1e-3


@pytest.mark.parametrize("case", _cases())
def test_parity_converted(case, converted):
    # full_forward adds the plain model(input_ids, pixel_values) call of the checking contract.
    report = run_parity(case, converted(case), full_forward=_checkpoint_bytes(case) <= SLOW_BYTES)
    print(report.format())
    report.raise_if_failed()


def test_converted_folder_layout(converted):
    """What the acceptance recipe loads besides the weights (the forward calls themselves run in
    test_parity_converted): a native config, the image processor, a model card."""
    from transformers import AutoConfig, AutoImageProcessor

    case = _small_case()
    dst = converted(case)
    config = AutoConfig.from_pretrained(dst)
    assert config.model_type == "eagle_vl" and config.architectures == ["EagleVLForConditionalGeneration"]
    raw = load_fixture(case)["manifest"]["config.json"]
    assert config.image_token_id == raw["vocab_size"]
    processor = AutoImageProcessor.from_pretrained(dst)
    assert processor.pad_to_square == (raw.get("image_aspect_ratio") == "pad")
    assert processor.crop_size["height"] == config.vision_config.image_size
    card = (dst / "README.md").read_text()
    assert "AutoModelForImageTextToText" in card
    assert all(f"`{name}`" in card for name in config.vision_config.expert_order)
    # The converter writes the card with eagle_hf.hub's one writer, with its source paragraph.
    from eagle_hf import hub

    assert hub.card_is_generated(dst)
    assert "Converted by `eagle-hf convert`" in card and f"(`mm_vision_tower` = `{raw['mm_vision_tower']}`)" in card
    counts = hub.parameter_counts(dst)
    for name in config.vision_config.expert_order:
        row = next(line for line in card.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.rstrip(" |").endswith(hub.human_count(counts[f"vision_tower.{name}"]))


def test_test_image_recipe_checksums():
    if PARITY_DIR is None:
        pytest.skip("shared/parity not found")
    for case in list_fixtures(PARITY_DIR):
        spec = load_fixture(case)["inputs"]["image"]
        image = draw_test_image(spec["width"], spec["height"])
        import numpy as np

        assert int(np.asarray(image, dtype=np.int64).sum()) == spec["checksum_sum_of_uint8"], case.name


def test_detweights_spot_checks():
    """README's table: this torch reproduces the fixtures' weights."""
    if PARITY_DIR is None:
        pytest.skip("shared/parity not found")
    fill = load_detweights(PARITY_DIR).fill
    t = fill("lm_head.weight", (512, 64))
    assert torch.allclose(t.flatten()[:3], torch.tensor([0.01300019, -0.08611732, 0.0317426]), atol=1e-7)
    assert math.isclose(t.double().sum().item(), -31.30306, rel_tol=1e-6)


# ----------------------------------------------------------------------------------------------
# Storage variants of an original checkpoint: shards, .bin, half precision


@pytest.fixture(scope="module")
def small_reference():
    """The small case's original checkpoint and its directly loaded float32 state dict."""
    from transformers import AutoModelForImageTextToText

    case = _small_case()
    folder = cached_original_checkpoint(case)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    return case, folder, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _from(folder: Path):
    """fill() that copies the base checkpoint's tensors: variants differ in storage, not values."""
    source = SourceCheckpoint(folder)
    return lambda name, shape, dtype: source.get(name).to(dtype)


@pytest.mark.parametrize("shards,fmt", [(3, "safetensors"), (1, "bin"), (2, "bin")])
def test_sharded_and_bin_checkpoints_load_identically(small_reference, tmp_path, shards, fmt):
    from transformers import AutoModelForImageTextToText

    case, base, reference = small_reference
    src = build_original_checkpoint(case, tmp_path / "orig", shards=shards, fmt=fmt, fill=_from(base))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    assert (src / index).is_file() == (shards > 1)
    direct = AutoModelForImageTextToText.from_pretrained(src).state_dict()
    assert direct.keys() == reference.keys()
    assert all(torch.equal(direct[k], reference[k]) for k in reference)
    del direct
    if (shards, fmt) != (2, "bin"):
        return  # converting from every layout repeats the same code path; one sharded .bin suffices
    dst = tmp_path / "native"
    total = sum(t.numel() * t.element_size() for t in reference.values())
    convert_original_checkpoint(src, dst, max_shard_size=total // 3, progress=False)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
    converted = AutoModelForImageTextToText.from_pretrained(dst).state_dict()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)


# bfloat16 keeps 8 bits of mantissa: CLIP features (std ~5) move by ~0.1, logits by ~1e-2.
HALF_BOUNDS = {"default": (0.3, 0.05), "pix2struct": (0.3, 0.05), "logits": (0.05, 0.02)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints(small_reference, tmp_path, dtype):
    """fp16/bf16 originals (as released) load in their dtype and convert without a cast."""
    from transformers import AutoModelForImageTextToText

    case, base, reference = small_reference
    src = build_original_checkpoint(case, tmp_path / "orig", dtype=dtype, fill=_from(base))
    model = AutoModelForImageTextToText.from_pretrained(src)
    assert model.dtype == dtype
    state = model.state_dict()
    assert all(torch.equal(state[k], reference[k].to(dtype)) for k in reference)
    if dtype == torch.bfloat16:  # one loose forward; float16 matmuls are very slow on CPU
        report = run_parity(case, model, bounds=HALF_BOUNDS, check_argmax=False)
        print(report.format())
        report.raise_if_failed()
    del model, state
    dst = tmp_path / "native"
    convert_original_checkpoint(src, dst, progress=False)
    header = read_safetensors_header(dst / "model.safetensors")
    code = {torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {code}
    assert AutoModelForImageTextToText.from_pretrained(dst).dtype == dtype


def test_convert_casts_dtype(small_reference, tmp_path):
    from transformers import AutoConfig

    _, base, reference = small_reference
    dst = tmp_path / "bf16"
    _convert_cli(base, dst, "--dtype", "bfloat16")
    header = read_safetensors_header(dst / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert AutoConfig.from_pretrained(dst).dtype == torch.bfloat16
    native = SourceCheckpoint(dst)
    key = "model.language_model.embed_tokens.weight"
    assert torch.equal(native.get(key), reference[key].to(torch.bfloat16))


# ----------------------------------------------------------------------------------------------
# EVA-02 RoPE tables: aliases, absent tables, saved values win


def _eva_only_fixture() -> dict:
    """A mixture case's manifest cut down to its EVA tower (the one with aliased RoPE tables)."""
    fixture = load_fixture(_mixture_case())
    config = dict(fixture["manifest"]["config.json"])
    entries = fixture["manifest"]["state_dict"]["keys"]
    tower = re.compile(r"^model\.vision_tower\.vision_towers\.(\d+)\.")
    index = next(int(tower.match(e["key"]).group(1)) for e in entries if e.get("alias_of"))
    channels = fixture["outputs"]["experts"][index]["channels"]
    keep = []
    for entry in entries:
        match = tower.match(entry["key"])
        if match and int(match.group(1)) != index:
            continue
        entry = dict(entry)
        for field in ("key", "alias_of"):
            if entry.get(field):
                entry[field] = tower.sub("model.vision_tower.vision_towers.0.", entry[field])
        if entry["key"] == "model.mm_projector.0.weight":
            entry["shape"] = [entry["shape"][0], channels]
        keep.append(entry)
    config.update(mm_vision_tower=config["mm_vision_tower"].split(";")[index], mm_hidden_size=channels)
    return {"manifest": {"config.json": config, "state_dict": {"keys": keep}}}


def _eva_variant(tmp_path: Path, aliases: str, drop=None) -> Path:
    """Zero-filled EVA-only original checkpoint in bfloat16 whose RoPE tables are the detweights
    ones rounded to bfloat16, as in released checkpoints."""
    fill = load_detweights(PARITY_DIR).fill

    def values(name, shape, dtype):
        if re.search(r"freqs_(cos|sin)$", name):
            return fill(name, shape, torch.bfloat16).to(dtype)
        return torch.zeros(shape, dtype=dtype)

    return build_original_checkpoint(_eva_only_fixture(), tmp_path / f"orig-{aliases}", dtype=torch.bfloat16,
                                     aliases=aliases, drop=drop, fill=values)


def _rope_buffers(state: dict) -> dict:
    return {k: v for k, v in state.items() if re.search(r"\.rope_(win|glb)\.freqs_", k)}


def _exact_table(key: str, shape) -> torch.Tensor:
    cos, sin = eva_rope_table(math.isqrt(shape[0]), shape[1], 10000.0, 16)
    return cos if key.endswith("cos") else sin


@pytest.mark.parametrize("aliases", ["all", "first", "none"])
def test_eva_rope_tables_with_or_without_aliases(tmp_path, aliases):
    """Saved tables are used as saved (bf16-rounded); absent ones are computed exactly."""
    from transformers import AutoModelForImageTextToText

    src = _eva_variant(tmp_path, aliases)
    direct = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32).state_dict()
    dst = tmp_path / "native"
    convert_original_checkpoint(src, dst, progress=False)
    native = SourceCheckpoint(dst)
    tables = _rope_buffers(direct)
    assert len(tables) == 4
    for key, value in tables.items():
        exact = _exact_table(key, value.shape)
        rounded = exact.to(torch.bfloat16).float()
        assert torch.equal(value, exact if aliases == "none" else rounded), key
        assert torch.equal(native.get(key).float(), rounded), key  # written in the checkpoint's bf16


def test_rope_tables_only_under_block_aliases(tmp_path):
    """A file that kept only the per-block aliases: the converter still uses the saved tables."""
    src = _eva_variant(tmp_path, "all", drop=lambda k: bool(re.search(r"\.rope_(win|glb)\.freqs_", k)))
    dst = tmp_path / "native"
    convert_original_checkpoint(src, dst, progress=False)
    native = SourceCheckpoint(dst)
    tables = _rope_buffers({k: native.info(k).shape for k in native.keys()})
    assert len(tables) == 4
    for key, shape in tables.items():
        assert torch.equal(native.get(key).float(), _exact_table(key, shape).to(torch.bfloat16).float()), key


# ----------------------------------------------------------------------------------------------
# Tokenizer and processor


def _write_tokenizer(folder: Path, size: int) -> None:
    """A word-level tokenizer of exactly ``size`` tokens with a Llama-like BOS, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "USER:": 3, "ASSISTANT:": 4, "\n": 5}
    for i in range(len(vocab), size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")
    fast.save_pretrained(folder)


def _tiny_original(tmp_path: Path, name: str = "orig", **kwargs) -> Path:
    """The small case's manifest, zero-filled (fast): for tests about files, not numbers."""
    return build_original_checkpoint(_small_case(), tmp_path / name, fill=_zeros, dtype=torch.bfloat16, **kwargs)


def test_convert_with_tokenizer_saves_processor(tmp_path):
    from transformers import AutoConfig, AutoProcessor

    src = _tiny_original(tmp_path)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    _write_tokenizer(src, vocab)
    dst = tmp_path / "native"
    _convert_cli(src, dst, "--template", "vicuna_v1")
    config = AutoConfig.from_pretrained(dst)
    processor = AutoProcessor.from_pretrained(dst)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == vocab
    assert processor.chat_template
    spec = load_fixture(_small_case())["inputs"]["image"]
    out = processor(text="USER: <image>\nw10 ASSISTANT:", images=draw_test_image(spec["width"], spec["height"]),
                    return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    assert ids.count(config.image_token_id) == config.image_seq_length
    assert ids[0] == 1 and ids[1] == 3  # BOS once, then the first chunk
    assert tuple(out["pixel_values"].shape[-2:]) == (config.vision_config.image_size,) * 2


def test_convert_without_tokenizer_warns_and_saves_image_processor(tmp_path):
    from transformers import AutoImageProcessor

    src = _tiny_original(tmp_path)
    with pytest.warns(UserWarning, match="no tokenizer"):
        convert_original_checkpoint(src, tmp_path / "native", progress=False)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "native")
    assert processor.pad_to_square  # image_aspect_ratio "pad"
    assert not (tmp_path / "native" / "tokenizer_config.json").exists()


def test_tokenizer_that_does_not_match_the_vocabulary_is_refused(tmp_path):
    src = _tiny_original(tmp_path)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    _write_tokenizer(src, vocab - 12)
    with pytest.raises(ValueError, match=rf"<image> the id {vocab - 12}.*image_token_id {vocab}"):
        convert_original_checkpoint(src, tmp_path / "native", progress=False)
    assert not (tmp_path / "native").exists()


def test_template_inference_by_vocabulary():
    from types import SimpleNamespace

    def config(vocab):
        return SimpleNamespace(text_config=SimpleNamespace(vocab_size=vocab))

    assert infer_template(config(32000)) == "vicuna_v1"
    assert infer_template(config(128256)) == infer_template(config(128257)) == "llama3"
    assert infer_template(config(64000)) == "yi_34b_chatml_direct"
    assert infer_template(config(512)) is None


@pytest.mark.parametrize("projector, renamed", [
    # The original's `linear` projector is a bare nn.Linear; `mlpNx_gelu` a Sequential whose
    # Linear k sits at index 2k (GELUs between).
    ("linear", {"model.mm_projector.weight": "model.multi_modal_projector.linear_1.weight"}),
    ("mlp3x_gelu", {"model.mm_projector.0.bias": "model.multi_modal_projector.linear_1.bias",
                    "model.mm_projector.2.weight": "model.multi_modal_projector.linear_2.weight",
                    "model.mm_projector.4.weight": "model.multi_modal_projector.linear_3.weight"}),
])
def test_original_projector_keys_are_renamed(projector, renamed):
    from eagle_hf.convert.legacy_eagle_llama import EagleLlamaConfig, rename_legacy_keys

    original = dict(load_fixture(_small_case())["manifest"]["config.json"], mm_projector_type=projector)
    assert rename_legacy_keys(list(renamed), EagleLlamaConfig.from_dict(original)) == renamed


# ----------------------------------------------------------------------------------------------
# Refusals and clear errors


def test_missing_tower_weights_are_refused(tmp_path):
    from transformers import AutoModelForImageTextToText

    src = _tiny_original(tmp_path, drop=lambda k: ".encoder.layers.3." in k)
    with pytest.raises(ValueError, match=r"(?s)missing \d+ weights.*encoder\.layers\.3\."):
        convert_original_checkpoint(src, tmp_path / "native", progress=False)
    assert not (tmp_path / "native").exists()
    with pytest.raises(ValueError, match=r"(?s)does not hold all weights.*missing: .*encoder\.layers\.3\."):
        AutoModelForImageTextToText.from_pretrained(src)


def test_unexpected_keys_are_refused(tmp_path):
    extra = {"model.vision_tower.vision_towers.7.vision_tower.blocks.0.weight": torch.zeros(4),
             "model.some_adapter.weight": torch.zeros(2, 2)}
    src = _tiny_original(tmp_path, extra=extra)
    with pytest.raises(ValueError, match=r"2 tensors that this EAGLE model .* does not have") as err:
        convert_original_checkpoint(src, tmp_path / "native", progress=False)
    for key in extra:
        assert key in str(err.value)
    assert not (tmp_path / "native").exists()


def test_truncated_safetensors_names_the_file(tmp_path):
    from transformers import AutoModelForImageTextToText

    src = _tiny_original(tmp_path, shards=2)
    shard = src / "model-00002-of-00002.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: truncated"):
        AutoModelForImageTextToText.from_pretrained(src)
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: truncated"):
        convert_original_checkpoint(src, tmp_path / "native", progress=False)
    assert not (tmp_path / "native").exists()
    assert cli_main(["convert", str(src), str(tmp_path / "native"), "--no-progress"]) == 2


@pytest.mark.parametrize("change,message", [
    ({"mm_vision_tower": "clip-448;resnet-1024"}, r"unknown towers \['resnet-1024'\]"),
    ({"mm_hidden_size": 1000}, r"mm_hidden_size 1000 disagrees .* sum to"),
])
def test_bad_configs_give_clear_errors(tmp_path, change, message):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = dict(load_fixture(_small_case())["manifest"]["config.json"])
    config.update({"mm_vision_tower": "clip-448;convnext-1024", "mm_hidden_size": 4096})
    config.update(change)
    src = tmp_path / "orig"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    for load in (AutoConfig.from_pretrained, AutoModelForImageTextToText.from_pretrained):
        with pytest.raises(ValueError, match=message):
            load(src)
    with pytest.raises(ValueError, match=message):
        convert_original_checkpoint(src, tmp_path / "native", progress=False)
    assert not (tmp_path / "native").exists()


def test_conversion_is_atomic(tmp_path, monkeypatch):
    src = _tiny_original(tmp_path)
    dst = tmp_path / "native"
    calls = {"n": 0}
    original_get = SourceCheckpoint.get

    def failing_get(self, name):
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk went away")
        return original_get(self, name)

    monkeypatch.setattr(SourceCheckpoint, "get", failing_get)
    with pytest.raises(OSError, match="disk went away"):
        convert_original_checkpoint(src, dst, progress=False)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orig"]  # no temporary folder left behind

    # An existing destination is refused, and survives a failed --overwrite untouched.
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError):
        convert_original_checkpoint(src, dst, progress=False)
    calls["n"] = 0
    with pytest.raises(OSError):
        convert_original_checkpoint(src, dst, overwrite=True, progress=False)
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]
    monkeypatch.setattr(SourceCheckpoint, "get", original_get)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        convert_original_checkpoint(src, dst, overwrite=True, progress=False)
    assert (dst / "model.safetensors").is_file() and not (dst / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native", "orig"]


def test_already_native_folder_is_refused(tmp_path, converted):
    dst = converted(_small_case())
    with pytest.raises(ValueError, match="already a native"):
        convert_original_checkpoint(dst, tmp_path / "again", progress=False)


def test_compare_stage_catches_deviations():
    """The comparison is not vacuous: one sample or the statistics past the bound fail the stage."""
    from eagle_hf.testing.parity import compare_stage

    entry = load_fixture(_small_case())["outputs"]["fused_vision_features"]
    tensor = torch.zeros(entry["shape"])
    for index, value in zip(entry["indices"], entry["values"]):
        tensor[tuple(index)] = value
    # Right samples, wrong distribution elsewhere: the stored mean/std catch it.
    assert not compare_stage("fused", tensor, entry, 1e-4, 1e-4).passed
    consistent = dict(entry, mean=float(tensor.double().mean()), std=float(tensor.double().std(unbiased=False)))
    assert compare_stage("fused", tensor, consistent, 1e-4, 1e-4).passed
    index = tuple(entry["indices"][0])
    tensor[index] += 1e-3 + 2e-4 * abs(tensor[index])
    failed = compare_stage("fused", tensor, consistent, 1e-4, 1e-4)
    assert not failed.passed and str(list(index)) in failed.detail
    wrong_shape = compare_stage("fused", tensor[:, :-1], consistent, 1e-4, 1e-4)
    assert not wrong_shape.passed and "shape" in wrong_shape.detail

"""Shared fixtures and helpers for the eagle-hf test suite (CPU, tiny configurations).

Fixtures: ``ckpt`` (a saved tiny checkpoint, per module), ``tiny_config`` (the ``preset_config("tiny")`` mix of all five experts with a tiny
Llama), ``tiny_model`` (an ``EagleVLForConditionalGeneration`` built from it, seeded, eval mode).
Helpers (import them with ``from conftest import ...``): ``make_inputs``, ``make_prompt``,
``make_pixel_values``, ``left_pad``, ``tiny_text_config``, ``distinct_width_vision_config``,
``seeded_model``, ``config_dict``, ``config_error``.
"""

import copy
import os

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

import eagle_hf  # noqa: F401  (registers the Auto classes)
from eagle_hf import EagleVLForConditionalGeneration, preset_config, vision_preset


def config_error(match: str):
    """Config validators run inside huggingface_hub's strict dataclasses, which wrap the ValueError
    they raise in a StrictDataclassClassValidationError (not a ValueError subclass)."""
    return pytest.raises((ValueError, StrictDataclassClassValidationError), match=match)


SEED = 0
PAD_ID = 0
BOS_ID = 1

# Tiny text configs for the LLM-swap tests; the same size as the tiny preset's Llama.
_TINY_TEXT_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)
TINY_TEXT_CONFIGS = {
    "llama": dict(model_type="llama", **_TINY_TEXT_COMMON),
    "qwen2": dict(model_type="qwen2", **_TINY_TEXT_COMMON),
    "mistral": dict(model_type="mistral", sliding_window=None, **_TINY_TEXT_COMMON),
}

# Expected decoder block class of each tiny LLM (must end up in `_no_split_modules`).
DECODER_LAYER = {"llama": "LlamaDecoderLayer", "qwen2": "Qwen2DecoderLayer", "mistral": "MistralDecoderLayer"}


def tiny_text_config(model_type: str = "llama", **overrides) -> dict:
    return {**copy.deepcopy(TINY_TEXT_CONFIGS[model_type]), **overrides}


def distinct_width_vision_config(**kwargs):
    """The tiny five-expert mix with a different channel count per expert, so that channel
    offsets are not multiples of one width (clip 24, convnext 40, sam 16, pix2struct 48, eva 32)."""
    cfg = vision_preset("tiny", **kwargs)
    widths = {}
    if cfg.clip_config is not None:
        cfg.clip_config.hidden_size = 24
        widths["clip"] = 24
    if cfg.convnext_config is not None:
        cfg.convnext_config.dims = [8, 16, 24, 40]
        widths["convnext"] = 40
    if cfg.sam_config is not None:
        cfg.sam_config.output_channels = 4
        widths["sam"] = 16
    if cfg.pix2struct_config is not None:
        cfg.pix2struct_config.hidden_size = 48
        cfg.pix2struct_config.d_kv = 12
        widths["pix2struct"] = 48
    if cfg.eva_config is not None:
        widths["eva"] = 32
    assert len(set(widths.values())) == len(widths), widths
    return cfg


def config_dict(config) -> dict:
    """``config.to_dict()`` without the fields that record where/with what it was saved."""
    d = config.to_dict()
    if isinstance(d.get("tower_config"), dict):
        d["tower_config"].pop("dtype", None)
    for key in ("_name_or_path", "transformers_version"):
        d.pop(key, None)
    for value in d.values():
        # from_pretrained records the load dtype in nested configs (a generic expert's tower_config)
        if isinstance(value, dict) and "tower_config" in value:
            value["tower_config"].pop("dtype", None)
    return d


def seeded_model(config, cls=EagleVLForConditionalGeneration, seed: int = SEED):
    torch.manual_seed(seed)
    return cls(config).eval()


def _text_ids(n: int, config, generator: torch.Generator) -> list[int]:
    """``n`` random ordinary text ids: never pad/bos, never the image token."""
    vocab = config.text_config.vocab_size
    hi = min(vocab, config.image_token_id) if config.image_token_id < vocab else vocab
    ids = torch.randint(2, hi, (n,), generator=generator).tolist()
    return [i if i != config.image_token_id else 2 for i in ids]


def make_prompt(config, n_images: int = 1, prefix: int = 3, suffix: int = 4, seed: int = SEED) -> list[int]:
    """One prompt: bos, ``prefix`` text ids, then per image ``image_seq_length`` image tokens
    followed by ``suffix`` text ids."""
    g = torch.Generator().manual_seed(seed)
    ids = [BOS_ID] + _text_ids(prefix, config, g)
    for _ in range(n_images):
        ids += [config.image_token_id] * config.image_seq_length + _text_ids(suffix, config, g)
    return ids


def make_pixel_values(config, n: int, seed: int = SEED) -> torch.Tensor:
    """``n`` normalised-looking images at the mixture's shared input size."""
    size = config.vision_config.image_size if hasattr(config, "vision_config") else config.image_size
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(n, 3, size, size, generator=g)


def left_pad(sequences: list[list[int]], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one batch: (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


def make_inputs(config, n_images: int = 1, batch_size: int = 1, prefix: int = 3, suffix: int = 4,
                seed: int = SEED, ragged: bool = False) -> dict[str, torch.Tensor]:
    """Model inputs for ``batch_size`` samples with ``n_images`` images each: ``input_ids``,
    ``attention_mask`` and ``pixel_values`` (``batch_size * n_images`` images, in text order).
    With ``ragged``, sample ``i`` gets ``i`` extra prefix tokens and the batch is left-padded."""
    prompts = [make_prompt(config, n_images, prefix + (i if ragged else 0), suffix, seed + i)
               for i in range(batch_size)]
    input_ids, attention_mask = left_pad(prompts)
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if n_images:
        out["pixel_values"] = make_pixel_values(config, batch_size * n_images, seed)
    return out


@pytest.fixture
def tiny_config():
    return preset_config("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    return seeded_model(tiny_config)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """``(path, model, processor)`` of a saved tiny checkpoint (12 new tokens by default), built
    once per test module: the inference, CLI and demo tests load it as a user would."""
    from eagle_hf.testing import build_tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny-eagle")
    model, processor = build_tiny_checkpoint(path, max_new_tokens=12)
    return path, model, processor


def pytest_collection_modifyitems(config, items):
    """Slow tests (full-size parity: a 9 GB checkpoint, minutes of CPU, ~10 GB RAM) run only when
    asked for, with ``-m slow``, ``-m full_size`` (full-size tests are all slow) or ``RUN_SLOW=1``;
    a plain ``pytest`` reports them as skipped."""
    markexpr = config.option.markexpr or ""
    asked = ("slow" in markexpr or "full_size" in markexpr
             or os.environ.get("RUN_SLOW", "").lower() in ("1", "yes", "true"))
    if asked:
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or RUN_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)

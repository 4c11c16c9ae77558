"""Named configurations: the released expert mixes and a tiny mix for tests and demos."""


import copy

from .configuration_eagle import RELEASED_X5_ORDER, EagleVisionConfig, EagleVLConfig
from .registry import get_expert

# Each expert's tiny and full-size configs live in its own module (`expert_<name>.py`) and are
# reached through the registry; this module only names mixes of them.
TINY_TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)

# Releases order pix2struct before the EVA detector (the training scripts had it the other way).
MIXES = {
    "x4": ["clip", "convnext", "pix2struct", "eva"],
    "x5": list(RELEASED_X5_ORDER),
}
# (image_size, grid_size) of each preset size.
_GEOMETRY = {"tiny": (64, 4), "full_size": (1024, 32)}


def vision_preset(name: str, experts: list[str] | None = None, **kwargs) -> EagleVisionConfig:
    """``"x4"``/``"x5"``: released mixes at full size; ``"tiny"``: the five released experts, tiny.
    ``experts`` picks any registered experts (in that order) at the preset's size; ``kwargs`` go
    to `EagleVisionConfig` (e.g. ``fusion``)."""
    if name != "tiny" and name not in MIXES:
        raise ValueError(f"unknown preset {name!r}; known presets: tiny, {', '.join(MIXES)}")
    size = "tiny" if name == "tiny" else "full_size"
    order = list(experts or MIXES.get(name, RELEASED_X5_ORDER))
    slots = {}
    for n in order:
        spec = get_expert(n)  # unknown names fail with the list of known ones
        try:
            slots[spec.slot] = spec.preset(size)
        except ValueError as err:
            raise ValueError(f"preset {name!r} cannot use expert {n!r}: {err}") from None
    image_size, grid_size = _GEOMETRY[size]
    kwargs.setdefault("image_size", image_size)
    kwargs.setdefault("grid_size", grid_size)
    return EagleVisionConfig(expert_order=order, **kwargs, **slots)


def preset_config(name: str, text_config: dict | None = None, experts: list[str] | None = None,
                  vision_kwargs: dict | None = None, **kwargs) -> EagleVLConfig:
    """A whole EAGLE config: a vision preset plus ``text_config`` (tiny Llama by default)."""
    text = copy.deepcopy(text_config if text_config is not None else TINY_TEXT)
    kwargs.setdefault("image_token_id", text.get("vocab_size", 32000) - 1)
    return EagleVLConfig(vision_config=vision_preset(name, experts, **(vision_kwargs or {})), text_config=text,
                         **kwargs)


# "tiny-train": the model of `eagle-hf train --model tiny` and the quickstart, small enough to learn
# the synthetic VQA task from scratch on a CPU in minutes. The ConvNeXt's residual blocks start
# switched on (layer scale 1, not the 1e-6 meant for deep pretrained nets) and its third stage
# already has the 4 x 4 grid's resolution at 64 px, so no token is an interpolation of others.
# (What makes shapes, counts and positions learnable at all is the training recipe, pre-alignment
# before fine-tuning: see eagle_hf/commands/quickstart.py.)
TINY_TRAIN_EXPERTS = {
    "convnext": dict(depths=[1, 1, 1, 1], dims=[32, 64, 96, 128], feature_stage=2, input_size=64, patch_size=4,
                     ls_init_value=1.0),
    "clip": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                 image_size=64, projection_dim=32),
}
TINY_TRAIN_TEXT = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, vocab_size=512, max_position_embeddings=512)


def tiny_train_config(vocab_size: int | None = None, **kwargs) -> EagleVLConfig:
    """The ``tiny-train`` preset: two tiny experts on 64 px images, a 4 x 4 token grid, a tiny Llama
    (``vocab_size`` to match a tokenizer built from the training data)."""
    text = copy.deepcopy(TINY_TRAIN_TEXT)
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    vision = EagleVisionConfig(expert_order=list(TINY_TRAIN_EXPERTS), image_size=64, grid_size=4,
                               **{get_expert(n).slot: copy.deepcopy(c) for n, c in TINY_TRAIN_EXPERTS.items()})
    kwargs.setdefault("image_token_id", text["vocab_size"] - 1)
    return EagleVLConfig(vision_config=vision, text_config=text, **kwargs)

"""Named configurations: the released expert mixes and a tiny mix for tests and demos."""


import copy

from .configuration_eagle import FULL_SIZE_EXPERTS, EagleVisionConfig, EagleVLConfig
from .registry import get_expert

# Experts small enough that the whole test-suite runs on a CPU in minutes, each keeping the
# structural features of its full-size architecture (windows + global layers, RoPE, unshuffle).
# SAM and Pix2Struct configs default to initializer_range=1e-10 (their releases are never trained
# from scratch); at that scale a fresh tiny SAM outputs ~0 and a fresh Pix2Struct ignores the
# image, so the tiny mix uses 0.02.
TINY_EXPERTS = {
    "clip": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                 image_size=48, projection_dim=32),
    "convnext": dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], input_size=64, patch_size=4),
    "sam": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_dim=64, image_size=64, patch_size=8,
                global_attn_indexes=[1], window_size=4, output_channels=8, initializer_range=0.02),
    "pix2struct": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, d_kv=8, d_ff=64, seq_len=128,
                       patch_embed_hidden_size=192, patch_size=8, max_patches=48, input_size=64,
                       initializer_range=0.02),
    "eva": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, patch_size=8,
                input_size=64, pretrain_image_size=32, window_size=4, global_attn_indexes=[1], rope_pt_seq_len=4),
}

TINY_TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)

# Releases order pix2struct before the EVA detector (the training scripts had it the other way).
MIXES = {
    "x4": ["clip", "convnext", "pix2struct", "eva"],
    "x5": ["clip", "convnext", "sam", "pix2struct", "eva"],
}


def vision_preset(name: str, experts: list[str] | None = None) -> EagleVisionConfig:
    """``"x4"``/``"x5"``: released mixes at full size; ``"tiny"``: all five experts, tiny."""
    table = TINY_EXPERTS if name == "tiny" else FULL_SIZE_EXPERTS
    for n in experts or ():
        get_expert(n)  # unknown names fail with the list of known ones
        if n not in table:
            raise ValueError(f"preset {name!r} has no configuration for expert {n!r}; it covers {', '.join(table)}")
    if name == "tiny":
        order = experts or list(TINY_EXPERTS)
        return EagleVisionConfig(expert_order=order, image_size=64, grid_size=4,
                                 **{f"{n}_config": copy.deepcopy(TINY_EXPERTS[n]) for n in order})
    if name not in MIXES:
        raise ValueError(f"unknown preset {name!r}; known presets: tiny, {', '.join(MIXES)}")
    order = experts or MIXES[name]
    return EagleVisionConfig(expert_order=order, image_size=1024, grid_size=32,
                             **{f"{n}_config": copy.deepcopy(FULL_SIZE_EXPERTS[n]) for n in order})


def preset_config(name: str, text_config: dict | None = None, experts: list[str] | None = None,
                  **kwargs) -> EagleVLConfig:
    """A whole EAGLE config: a vision preset plus ``text_config`` (tiny Llama by default)."""
    text = copy.deepcopy(text_config if text_config is not None else TINY_TEXT)
    kwargs.setdefault("image_token_id", text.get("vocab_size", 32000) - 1)
    return EagleVLConfig(vision_config=vision_preset(name, experts), text_config=text, **kwargs)


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
                               **{f"{n}_config": copy.deepcopy(c) for n, c in TINY_TRAIN_EXPERTS.items()})
    kwargs.setdefault("image_token_id", text["vocab_size"] - 1)
    return EagleVLConfig(vision_config=vision, text_config=text, **kwargs)

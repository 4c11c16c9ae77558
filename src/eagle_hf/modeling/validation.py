"""Checks of model inputs, configs and loaded checkpoints: one home, so that a fix lands once.

Every check raises with the offending argument, key or value and the fix. They are placed where
they cost nothing per decoding step: shape and dtype comparisons anywhere, value scans (which
synchronise an accelerator) only once per image encode or per prefill.

This module imports only torch, so configs, models, processors and commands can all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

# Normalised pixels of the configured mean/std lie within about [-2, 2.2]; raw 0..255 pixels are
# far outside. Anything beyond this many times the normalised range is taken to be raw pixels
# (random-normal test inputs reach ~6, so the margin is wide).
RAW_PIXEL_FACTOR = 10.0

# Size fields of expert and text configs that must be positive wherever a config has them.
POSITIVE_SIZE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "patch_size", "image_size", "input_size", "mlp_dim", "output_channels", "d_kv", "d_ff",
    "patch_embed_hidden_size", "seq_len", "max_patches", "projection_dim", "vocab_size",
    "max_position_embeddings", "pixel_unshuffle", "dims", "depths",
)


# --------------------------------------------------------------------------------------------------
# configs


def check_positive_sizes(config: Any, where: str, fields: Iterable[str] = POSITIVE_SIZE_FIELDS) -> None:
    """Refuse zero or negative sizes at config construction (they would die later in tensor creation)."""
    for name in fields:
        value = getattr(config, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and v < 1:
                raise ValueError(f"{where}.{name} must be positive, got {value!r}")


def rope_position_limit(text_config: Any) -> tuple[int, str]:
    """Positions the LLM can address and how that number was found: ``max_position_embeddings``,
    raised by a RoPE scaling ``factor`` (applied to ``original_max_position_embeddings`` where given,
    so Llama-3.1-style configs that already state the stretched length keep it)."""
    positions = text_config.max_position_embeddings
    limit, where = positions, f"text_config.max_position_embeddings={positions}"
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    if not isinstance(rope, dict):
        return limit, where
    # One dict, or one per layer type (e.g. {"full_attention": {...}, "sliding_attention": {...}}).
    for params in [rope] if "rope_type" in rope or "type" in rope else [v for v in rope.values() if isinstance(v, dict)]:
        rope_type, factor = params.get("rope_type", params.get("type", "default")), params.get("factor")
        if rope_type != "default" and factor:
            base = params.get("original_max_position_embeddings") or positions
            if int(base * factor) > limit:
                limit = int(base * factor)
                where = f"{base} x rope factor {factor:g} ({rope_type}; text_config.max_position_embeddings={positions})"
    return limit, where


def check_projector_layout(config: Any) -> None:
    """The fused channels are concatenated in ``expert_order``; the projector's first layer was
    trained on the order recorded in ``projector_expert_order`` when the model was saved. A
    different order would load (the experts' weights are found by name) with the projector's
    input channels silently permuted."""
    trained = getattr(config, "projector_expert_order", None)
    current = list(config.vision_config.expert_order)
    if trained is not None and list(trained) != current:
        raise ValueError(
            f"vision_config.expert_order {current} differs from the order the projector was trained on, "
            f"projector_expert_order {list(trained)}: the fused channels would reach the projector permuted. "
            f"Restore expert_order to {list(trained)} (or train a new projector and save the model again)"
        )


def check_processor_matches_model(processor: Any, config: Any, where: str = "the processor") -> None:
    """A processor and a model must agree on the image placeholder: its token id and how many
    tokens one image occupies (the model's grid)."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is not None and token_id != config.image_token_id:
        raise ValueError(
            f"{where} writes images as token id {token_id} ({getattr(processor, 'image_token', '<image>')!r}) but the "
            f"model's config.image_token_id is {config.image_token_id}; use the processor saved with the model, or set "
            f"config.image_token_id={token_id} if the tokenizer is the one the model was trained with"
        )
    seq_length = getattr(processor, "image_seq_length", None)
    if seq_length is not None and seq_length != config.image_seq_length:
        grid = config.vision_config.grid_size
        raise ValueError(
            f"{where} inserts {seq_length} image tokens per image (image_seq_length) but the model's vision grid makes "
            f"{config.image_seq_length} (vision_config.grid_size={grid}, {grid}x{grid}); build the processor with "
            f"image_seq_length={config.image_seq_length}"
        )
    crop = getattr(getattr(processor, "image_processor", None), "crop_size", None)
    height = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
    size = config.vision_config.image_size
    if height is not None and getattr(processor.image_processor, "do_center_crop", True) and height != size:
        raise ValueError(
            f"{where}'s image processor makes {height}x{height} images (crop_size) but the model's experts share a "
            f"{size}x{size} input (vision_config.image_size); use the image processor saved with the model"
        )


# --------------------------------------------------------------------------------------------------
# model inputs


def check_pixel_values(pixel_values: Any, config: Any, device: torch.device | None = None) -> None:
    """Shape, dtype, device and values of ``pixel_values`` (once per image encode, never per step).

    ``config``: the vision config (``image_size``, ``image_mean``, ``image_std``); ``device``: where
    the experts are, or ``None`` when something else (accelerate's hooks) moves the inputs."""
    size = config.image_size
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(f"pixel_values must be a [batch, 3, {size}, {size}] tensor, got {shape}")
    if tuple(pixel_values.shape[-2:]) != (size, size):
        raise ValueError(
            f"pixel_values are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but this model's experts share a "
            f"{size}x{size} input; preprocess images with the model's image processor"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values are {str(pixel_values.dtype).replace('torch.', '')}: raw 0..255 pixels? The model takes "
            "normalised float pixel_values; pass the images through the model's processor / image processor "
            "(processor(images=...)) instead"
        )
    if device is not None and pixel_values.device != device and pixel_values.device.type != "meta":
        raise ValueError(
            f"pixel_values are on {pixel_values.device} but the vision experts are on {device}; move them with "
            f"pixel_values.to({str(device)!r}) (or inputs.to(model.device))"
        )
    if pixel_values.numel() == 0 or pixel_values.device.type == "meta" or torch.compiler.is_compiling():
        return  # the value scan branches on data: eager only
    lo, hi = (float(v) for v in torch.aminmax(pixel_values.detach()))
    if lo != lo or hi != hi or abs(lo) == float("inf") or abs(hi) == float("inf"):
        bad = (~torch.isfinite(pixel_values.detach())).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(
            f"pixel_values of image(s) {bad} contain NaN or infinite values, which make every logit NaN; check the "
            "image loading / augmentation that produced them"
        )
    mean = torch.tensor(config.image_mean, dtype=torch.float64)
    std = torch.tensor(config.image_std, dtype=torch.float64)
    bound = RAW_PIXEL_FACTOR * float(torch.maximum(mean / std, (1 - mean) / std).max())
    if hi > bound or lo < -bound:
        raise ValueError(
            f"pixel_values range over [{lo:.4g}, {hi:.4g}], far outside the normalised range of this model's "
            f"image_mean/image_std: raw 0..255 pixels? Pass the images through the model's processor / image "
            "processor (processor(images=...)) instead"
        )


def check_text_inputs(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, attention_mask: Any,
                      vocab_size: int, image_token_id: int, prefill: bool) -> None:
    """Token inputs of a forward call. Shape checks always (free); the token-id range only at prefill
    (decoding steps feed back ids the model produced, and scanning them would sync every step)."""
    batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    if length == 0:
        raise ValueError("input_ids are empty (0 tokens): give the model a prompt (e.g. at least the BOS token)")
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
        check_attention_mask_shape(tuple(attention_mask.shape), batch, length, exact=prefill)
    if input_ids is not None and prefill:
        if input_ids.is_floating_point():
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        text = input_ids if image_token_id < vocab_size else input_ids.masked_fill(input_ids == image_token_id, 0)
        lo, hi = (int(v) for v in torch.aminmax(text))
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            hint = " (-100 belongs in labels, not input_ids; pad input_ids with the pad token id)" if bad == -100 else ""
            raise ValueError(
                f"input_ids hold token id {bad}, outside the language model's vocabulary of {vocab_size} ids "
                f"(0..{vocab_size - 1}){hint}; use the tokenizer saved with the model, or resize the embeddings "
                "after adding tokens (model.resize_token_embeddings)"
            )


def check_attention_mask_shape(mask_shape: tuple[int, ...], batch: int, length: int, exact: bool) -> None:
    """A 2-D attention_mask covers every token: exactly the input's length without a cache, the
    cached plus the new tokens with one."""
    if len(mask_shape) == 2 and (mask_shape[0] != batch or mask_shape[1] < length or (exact and mask_shape[1] != length)):
        raise ValueError(
            f"attention_mask has shape {mask_shape} but the input is {batch} x {length} tokens; the mask needs one "
            "entry per token (use the attention_mask the processor returned with input_ids)"
        )


def check_labels(labels: torch.Tensor | None, tokens: torch.Tensor | None) -> None:
    """``labels`` align with the input tokens (``tokens``: input_ids or inputs_embeds)."""
    if labels is None or tokens is None:
        return
    if tuple(labels.shape) != tuple(tokens.shape[:2]):
        raise ValueError(
            f"labels have shape {tuple(labels.shape)} but input_ids have shape {tuple(tokens.shape[:2])}; labels need "
            "one entry per input token (-100 where no loss is wanted), built together with input_ids"
        )


def check_image_token_spans(mask: torch.Tensor, per_image: int) -> None:
    """Each image fills ``per_image`` consecutive tokens of one row: a span split across rows (or cut
    by text) would get parts of two images. ``mask``: [batch, seq] image-token positions."""
    rows = mask.detach().to("cpu", torch.int8)
    edges = torch.nn.functional.pad(rows, (1, 1)).diff(dim=1)
    for row in range(rows.shape[0]):
        starts = (edges[row] == 1).nonzero().flatten()
        ends = (edges[row] == -1).nonzero().flatten()
        for start, end in zip(starts.tolist(), ends.tolist()):
            if (end - start) % per_image:
                counts = rows.sum(1).tolist()
                raise ValueError(
                    f"row {row} of input_ids has a run of {end - start} image tokens at positions {start}..{end - 1}, "
                    f"not a whole number of images of {per_image} tokens (image tokens per row: {counts}); each "
                    "image's placeholder span must stay whole in one row: do not truncate, wrap or pack a "
                    "sequence inside an image span"
                )


def explain_image_token_mismatch(input_ids: torch.Tensor | None, n_tokens: int, n_features: int, per_image: int,
                                 image_token_id: int, pad_token_id: int | None = None) -> str:
    """Why the text's image tokens and the given images disagree, when a processor/model mismatch
    explains it (only computed on the error path)."""
    n_images = n_features // per_image
    if n_images and n_tokens and n_tokens % n_images == 0 and n_tokens // n_images != per_image:
        return (f"; the text has {n_tokens // n_images} image tokens per image but this model's vision grid makes "
                f"{per_image} (config.image_seq_length): the processor's image_seq_length does not match the model, "
                f"build it with image_seq_length={per_image}")
    if n_images and n_tokens == 0 and input_ids is not None:
        ids, counts = torch.unique(input_ids.detach().cpu(), return_counts=True)
        for token, count in zip(ids.tolist(), counts.tolist()):
            if token != pad_token_id and count == n_features:
                return (f"; the text holds {count} copies of token id {token}, as many as the images need: the "
                        f"processor's image_token_id seems to be {token} but the model's config.image_token_id is "
                        f"{image_token_id}; processor and model must use the same image token id")
    return ""


def check_generation_length(prompt_length: int, max_length: int, max_new_tokens: int | None, limit: int,
                            limit_source: str) -> None:
    """Refuse, before generating, a ``generate`` call that would run past the model's positions."""
    if max_length <= limit:
        return
    room = max(limit - prompt_length, 0)
    asked = f"max_new_tokens={max_new_tokens}" if max_new_tokens is not None else f"max_length={max_length}"
    raise ValueError(
        f"generate would reach {max_length} tokens ({prompt_length}-token prompt + {max_length - prompt_length} new, "
        f"{asked}) but this model has {limit} positions ({limit_source}); pass max_new_tokens <= {room} or shorten "
        "the prompt"
    )


# --------------------------------------------------------------------------------------------------
# loaded checkpoints

_EXPERT_KEY = re.compile(r"(?:^|\.)vision_tower\.([A-Za-z0-9_]+)\.")


def unlisted_expert_weights(info: dict, expert_order: Sequence[str], registered: Iterable[str]) -> dict[str, int]:
    """Experts (name -> tensor count) whose weights the checkpoint holds but ``expert_order`` does not list."""
    listed, known = set(expert_order), set(registered)
    extra: dict[str, int] = {}
    for key in info.get("unexpected_keys") or ():
        match = _EXPERT_KEY.search(key)
        if match and match.group(1) in known and match.group(1) not in listed:
            extra[match.group(1)] = extra.get(match.group(1), 0) + 1
    return extra


def _unlisted_message(extra: dict[str, int], expert_order: Sequence[str]) -> str:
    names = ", ".join(f"{name!r} ({count} tensors)" for name, count in sorted(extra.items()))
    return (f"it holds weights of expert(s) {names} that vision_config.expert_order {list(expert_order)} does not "
            "list, so their features would be missing from the fused channels the projector was trained on")


def check_mismatched_shapes(info: dict, source: Any, expert_order: Sequence[str], registered: Iterable[str],
                            ignore_mismatched_sizes: bool) -> None:
    """Refuse tensors of the wrong shape naming each key and both shapes (transformers' own error
    points at a logged report, which quiet front ends such as ``eagle-hf chat`` hide)."""
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])
    if not mismatched or ignore_mismatched_sizes:
        return
    shown = "; ".join(f"{key}: checkpoint {tuple(saved)} vs model {tuple(wanted)}" for key, saved, wanted in
                      mismatched[:8])
    more = f" ... ({len(mismatched)} in all)" if len(mismatched) > 8 else ""
    extra = unlisted_expert_weights(info, expert_order, registered)
    why = f"; {_unlisted_message(extra, expert_order)}" if extra else ""
    raise ValueError(
        f"{source} holds tensors whose shapes differ from this model's config: {shown}{more}{why}. Load it with the "
        "config saved next to it (another expert mix, grid or LLM size?), or pass ignore_mismatched_sizes=True to "
        "re-initialise those tensors"
    )


def check_unlisted_experts(info: dict, source: Any, expert_order: Sequence[str], registered: Iterable[str]) -> None:
    extra = unlisted_expert_weights(info, expert_order, registered)
    if extra:
        raise ValueError(
            f"{source} does not match this model's config: {_unlisted_message(extra, expert_order)}. Load the folder "
            "with its own config.json, or add the expert(s) back to expert_order"
        )

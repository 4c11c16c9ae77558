"""Loading original NVlabs EAGLE checkpoints (``model_type: eagle_llama``).

The original config is a flat `LlamaConfig` plus ``mm_*`` fields; its weights use LLaVA-fork
names with experts indexed by their position in the ``mm_vision_tower`` string. This module
reads that config into the native `EagleVLConfig` (experts in the string's order) and renames
the weights with transformers' `WeightRenaming` rules, computed from the config because the
index -> expert mapping is per checkpoint.
"""


import os
import re

from huggingface_hub.dataclasses import strict
from transformers.core_model_loading import WeightRenaming, apply_renamings

from ..modeling.configuration_eagle import EagleVLConfig
from ..modeling.modeling_eagle import EagleVLForConditionalGeneration
from ..modeling.registry import get_expert

# Constants of the original mixture (hard-coded there, so they are facts about the format).
ORIGINAL_MIXTURE_IMAGE_SIZE = 1024
ORIGINAL_MIXTURE_GRID = 32
# Sub-names of the original `mm_vision_tower` string -> (expert, overrides of the full-size config).
ORIGINAL_TOWERS = {
    "clip-448": ("clip", {"input_size": 336}),  # the original runs "clip-448" at 336 px (NVlabs/Eagle#22)
    "convnext-1024": ("convnext", {}),
    "sam-1024": ("sam", {}),
    "pix2struct-1024": ("pix2struct", {}),
    "det-1024": ("eva", {}),
}
# Fields of the original config that describe the multimodal wrapper, not the LLM.
LEGACY_ONLY_FIELDS = {
    "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
    "mm_patch_merge_type", "mm_use_im_start_end", "mm_use_im_patch_token", "mm_projector_lr",
    "mm_projector_query_number", "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length",
    "tokenizer_padding_side", "tune_mm_mlp_adapter", "tune_mm_mlp_adapter_intern", "freeze_mm_mlp_adapter",
    "freeze_vision", "use_mm_proj", "max_length", "architectures", "model_type", "_name_or_path",
    "transformers_version", "torch_dtype", "dtype", "vision_tower",
}
# Original keys with no counterpart: ConvNeXt's unused classifier head, and the per-block
# aliases of EVA's two shared RoPE tables (the tables themselves load from rope_win/rope_glb).
LEGACY_DROPPED_KEYS = [r"^model\.vision_tower\.convnext\.head\.", r"^model\.vision_tower\.eva\.blocks\.\d+\.attn\.rope\."]


def parse_tower_string(tower: str) -> list[str]:
    names = [n.strip() for n in tower.split(";") if n.strip()]
    unknown = [n for n in names if n not in ORIGINAL_TOWERS]
    if unknown or not names:
        raise ValueError(
            f"mm_vision_tower {tower!r} names unknown towers {unknown}; eagle-hf knows "
            f"{', '.join(ORIGINAL_TOWERS)} (joined with ';') or a single 'openai/clip-vit-*' tower"
        )
    return names


def is_single_clip(tower: str) -> bool:
    # The original builder's rule: a name with "clip" that starts with "openai" is a LLaVA-style tower.
    return "clip" in tower and tower.startswith("openai") and ";" not in tower


def legacy_to_native(config_dict: dict) -> dict:
    """Original flat `eagle_llama` config dict -> native `EagleVLConfig` kwargs."""
    d = dict(config_dict)
    tower = d.get("mm_vision_tower") or d.get("vision_tower")
    if not tower:
        raise ValueError("this eagle_llama config has no mm_vision_tower: it is a text-only LLM, not an EAGLE model")
    if is_single_clip(tower):
        clip = get_expert("clip").preset("full_size")
        if "336" not in tower:
            clip.update(image_size=224)
        select = d.get("mm_vision_select_feature", "patch")
        if select not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature {select!r} is not supported (use 'patch' or 'cls_patch')")
        if select == "cls_patch":
            raise ValueError("mm_vision_select_feature 'cls_patch' (577 tokens) does not fit a square token grid")
        clip.update(feature_layer=d.get("mm_vision_select_layer", -2), drop_cls_before_encoder=False)
        side = clip["image_size"]
        vision = dict(expert_order=["clip"], clip_config=clip, image_size=side,
                      grid_size=side // clip["patch_size"])
    else:
        experts = {}
        for sub in parse_tower_string(tower):
            name, overrides = ORIGINAL_TOWERS[sub]
            if name in experts:
                raise ValueError(f"mm_vision_tower {tower!r} lists {sub!r} twice")
            experts[name] = {**get_expert(name).preset("full_size"), **overrides}
        vision = dict(expert_order=list(experts), image_size=ORIGINAL_MIXTURE_IMAGE_SIZE,
                      grid_size=ORIGINAL_MIXTURE_GRID, **{get_expert(n).slot: c for n, c in experts.items()})

    projector = d.get("mm_projector_type", "linear")
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector)
    if match:
        proj = dict(projector_type="mlp", projector_depth=int(match.group(1)), projector_hidden_act="gelu")
    elif projector in ("linear", "identity"):
        proj = dict(projector_type=projector)
    else:
        raise ValueError(f"mm_projector_type {projector!r} is not supported (mlpNx_gelu, linear or identity)")
    if d.get("mm_use_im_start_end"):
        raise ValueError("checkpoints trained with mm_use_im_start_end=True are not supported")

    text = {k: v for k, v in d.items() if k not in LEGACY_ONLY_FIELDS}
    if "rope_theta" in text and "rope_parameters" not in text:
        scaling = text.pop("rope_scaling", None) or {}
        text["rope_parameters"] = {"rope_type": scaling.get("rope_type", scaling.get("type", "default")),
                                   **{k: v for k, v in scaling.items() if k != "type"},
                                   "rope_theta": text.pop("rope_theta")}
    text["model_type"] = "llama"
    native = dict(
        vision_config=vision, text_config=text, image_token_id=text.get("vocab_size", 32000),
        model_max_length=d.get("tokenizer_model_max_length"), legacy_vision_tower=tower,
        image_aspect_ratio=d.get("image_aspect_ratio"), **proj,
    )
    if d.get("torch_dtype") or d.get("dtype"):
        native["dtype"] = d.get("dtype") or d.get("torch_dtype")
    return native


@strict
class EagleLlamaConfig(EagleVLConfig):
    """`EagleVLConfig` read from an original ``eagle_llama`` config.json.

    The flat original fields are converted on load; ``legacy_vision_tower`` keeps the original
    tower string (it decides the weight names) and ``image_aspect_ratio`` the original
    preprocessing mode.
    """

    model_type = "eagle_llama"

    legacy_vision_tower: str | None = None
    image_aspect_ratio: str | None = None

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if "mm_vision_tower" in config_dict or "vision_config" not in config_dict:
            config = legacy_to_native(config_dict)
            mm_hidden = config_dict.get("mm_hidden_size")
            result = super().from_dict(config, **kwargs)
            built = result[0] if isinstance(result, tuple) else result
            if mm_hidden is not None and mm_hidden != built.vision_config.hidden_size:
                channels = built.vision_config.expert_channels
                raise ValueError(
                    f"mm_hidden_size {mm_hidden} disagrees with the towers of mm_vision_tower "
                    f"{config_dict.get('mm_vision_tower')!r}, whose channels sum to {sum(channels.values())} ({channels})"
                )
            return result
        return super().from_dict(config_dict, **kwargs)

    def native_dict(self) -> dict:
        """This config as a native `eagle_vl` config dict (for conversion)."""
        d = self.to_dict()
        for key in ("legacy_vision_tower", "image_aspect_ratio", "architectures", "auto_map"):
            d.pop(key, None)
        d["model_type"] = EagleVLConfig.model_type
        return d


def legacy_renamings(config: EagleVLConfig) -> list[tuple[str, str]]:
    """Ordered (regex, replacement) rules from original key names to native ones."""
    vision = config.vision_config
    tower = getattr(config, "legacy_vision_tower", None) or ""
    rules = []
    if tower and is_single_clip(tower):
        rules.append((r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower.clip."))
    else:
        for index, name in enumerate(vision.expert_order):
            rules.append((rf"^model\.vision_tower\.vision_towers\.{index}\.vision_tower\.", f"model.vision_tower.{name}."))
        rules.append((r"^model\.vision_tower\.clip\.vision_model\.", "model.vision_tower.clip."))
        # The original named ConvNeXt's layer scale `weight` (timm: `gamma`).
        rules.append((r"^(model\.vision_tower\.convnext\.stages\.\d+\.blocks\.\d+)\.weight$", r"\1.gamma"))
    # The original's projector layout: a bare nn.Linear for `linear` (no Sequential index in the
    # key), nn.Sequential(Linear, GELU, Linear, ...) for `mlp` (Linear k at index 2k).
    if config.projector_type == "linear":
        rules.append((r"^model\.mm_projector\.", "model.multi_modal_projector.linear_1."))
    elif config.projector_type == "mlp":
        for k in range(config.projector_layers):
            rules.append((rf"^model\.mm_projector\.{2 * k}\.", f"model.multi_modal_projector.linear_{k + 1}."))
    rules.append((r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."))
    return rules


def rename_legacy_keys(keys, config: EagleVLConfig) -> dict[str, str | None]:
    """Map each original key to its native name, or None for keys that are dropped."""
    renamings = [WeightRenaming(source_patterns=s, target_patterns=t) for s, t in legacy_renamings(config)]
    dropped = [re.compile(p) for p in LEGACY_DROPPED_KEYS]
    out = {}
    for key in keys:
        new = apply_renamings(key, renamings)
        out[key] = None if any(p.search(new) for p in dropped) else new
    return out


class EagleLlamaForConditionalGeneration(EagleVLForConditionalGeneration):
    """An original EAGLE checkpoint loaded onto the native model (weights renamed on load)."""

    config: EagleLlamaConfig
    _keys_to_ignore_on_load_unexpected = LEGACY_DROPPED_KEYS

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, key_mapping=None, **kwargs):
        if config is None or not isinstance(config, EagleVLConfig):
            hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
                          if k in kwargs}
            config = EagleLlamaConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if os.path.isdir(folder):
            # safetensors reports a cut-short file without naming it; check the headers first.
            from ..convert.checkpoint_io import validate_checkpoint_folder

            validate_checkpoint_folder(folder)
        mapping = dict(legacy_renamings(config))
        mapping.update(key_mapping or {})
        # Missing weights are refused by EaglePreTrainedModel.from_pretrained.
        return super().from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, key_mapping=mapping, **kwargs,
        )

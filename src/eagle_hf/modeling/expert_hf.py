"""Any transformers vision model as an expert, through its config (SigLIP, SigLIP2, DINOv2,
ConvNeXtV2, ...): ``tower_config`` is the model's own config, ``AutoModel`` builds it, and the
expert reads one of its hidden states as a feature map.

ViT-like towers (``hidden_size`` + ``patch_size``) return tokens: the prefix tokens (CLS,
registers) are dropped and the rest is folded into the patch grid. CNN towers (``hidden_sizes``)
return maps. The tower is the child ``tower``, so weights saved by the tower's own
``save_pretrained`` load into it (`EagleVisionTower.load_expert_weights`).
"""

import inspect

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec

from .registry import VisionExpertMixin, register_expert, tokens_to_map


@strict
class EagleHFExpertConfig(PreTrainedConfig):
    """``tower_config``: the transformers config of the tower (its ``model_type`` picks the class).
    ``feature_layer``: index into the tower's ``hidden_states`` (0 = embeddings, negative from the
    end; for CNNs 1..n are the stages). ``num_prefix_tokens``: tokens dropped before the patch grid
    (CLS, registers); ``None`` counts them from the tower's config. ``input_size``: side of the
    image fed to it (default the tower's ``image_size``; position tables are interpolated)."""

    model_type = "eagle_vl_hf"
    sub_configs_defaults = {"tower_config": SubConfigSpec(AutoConfig, model_type="siglip_vision_model")}

    tower_config: dict | PreTrainedConfig | None = None
    feature_layer: int = -1
    num_prefix_tokens: int | None = None
    input_size: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.input_size is None:
            size = getattr(self.tower_config, "image_size", None)
            self.input_size = size if isinstance(size, int) else 224

    @property
    def is_cnn(self) -> bool:
        return getattr(self.tower_config, "hidden_sizes", None) is not None

    @property
    def num_feature_layers(self) -> int:
        cfg = self.tower_config
        return len(cfg.hidden_sizes) if self.is_cnn else cfg.num_hidden_layers

    @property
    def feature_index(self) -> int:
        k = self.feature_layer
        return k if k >= 0 else self.num_feature_layers + 1 + k

    def validate_tower(self):
        cfg = self.tower_config
        kind = getattr(cfg, "model_type", None)
        if not self.is_cnn and not (hasattr(cfg, "patch_size") and hasattr(cfg, "hidden_size")):
            raise ValueError(
                f"tower_config of model_type {kind!r} is not a vision backbone that returns a feature map: "
                "use a ViT-like config (hidden_size and patch_size, e.g. siglip_vision_model, dinov2) or a CNN "
                "(hidden_sizes, e.g. convnextv2)")
        n = self.num_feature_layers
        if not -n - 1 <= self.feature_layer <= n:
            raise ValueError(f"feature_layer={self.feature_layer} is outside the {n} "
                             f"{'stages' if self.is_cnn else 'layers'} of this {kind} tower")
        if self.is_cnn and self.feature_index == 0:
            raise ValueError("feature_layer 0 is the CNN's stem; use a stage (1.."
                             f"{n} or negative)")
        if not self.is_cnn and self.input_size < cfg.patch_size:
            raise ValueError(f"input_size {self.input_size} is smaller than the tower's patch_size {cfg.patch_size}")
        if self.num_prefix_tokens is not None and self.num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0 (or None to count them), got {self.num_prefix_tokens}")

    @property
    def prefix_tokens(self) -> int:
        if self.num_prefix_tokens is not None:
            return self.num_prefix_tokens
        cfg = self.tower_config
        kind = cfg.model_type
        if kind.startswith("siglip"):
            return 0  # SigLIP has no class token
        # CLIP-, ViT- and DINOv2-style towers: one class token, plus registers where configured.
        return 1 + (getattr(cfg, "num_register_tokens", 0) or 0)

    @property
    def out_channels(self) -> int:
        cfg = self.tower_config
        if self.is_cnn:
            return cfg.hidden_sizes[self.feature_index - 1]
        return cfg.hidden_size


class EagleHFExpert(VisionExpertMixin, PreTrainedModel):
    config: EagleHFExpertConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: EagleHFExpertConfig):
        super().__init__(config)
        self.tower = AutoModel.from_config(config.tower_config)
        params = inspect.signature(self.tower.forward).parameters
        self._interpolate = "interpolate_pos_encoding" in params
        self.post_init()

    def unused_parameters(self) -> list:
        # The expert reads hidden_states[feature_index]: later layers/stages, the final norm and any
        # pooling head never see the image's gradient, nor does a masked-image-modelling mask token.
        cfg = self.config
        used_blocks = cfg.feature_index
        unused = []
        for name, param in self.tower.named_parameters():
            parts = name.split(".")
            if any(p in ("head", "pooler", "post_layernorm", "mask_token") for p in parts) or parts[0] == "layernorm":
                unused.append(param)
                continue
            for i, p in enumerate(parts[:-1]):
                if p in ("layers", "layer", "stages") and parts[i + 1].isdigit():
                    # ViT layer k feeds hidden_states[k + 1]; CNN stage k feeds hidden_states[k + 1]
                    if int(parts[i + 1]) >= used_blocks:
                        unused.append(param)
                    break
        return unused

    def _patchify(self, pixel_values: torch.Tensor) -> dict:
        # SigLIP2 (NaFlex) takes flattened patches in its processor's (row, column, channel) order.
        p = self.config.tower_config.patch_size
        b, c, h, w = pixel_values.shape
        pixel_values = pixel_values[:, :, : h // p * p, : w // p * p]  # as the patch conv of the others
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(b, (h // p) * (w // p), p * p * c)
        shapes = torch.tensor([[h // p, w // p]] * b, device=pixel_values.device)
        mask = torch.ones(b, patches.shape[1], dtype=torch.long, device=pixel_values.device)
        return dict(pixel_values=patches, spatial_shapes=shapes, pixel_attention_mask=mask)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        cfg = self.config
        pixel_values = pixel_values.to(self.dtype)
        if cfg.tower_config.model_type == "siglip2_vision_model":
            inputs = self._patchify(pixel_values)
        else:
            inputs = dict(pixel_values=pixel_values)
            if self._interpolate:
                inputs["interpolate_pos_encoding"] = True
        out = self.tower(**inputs, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[cfg.feature_index]
        if hidden.ndim == 4:
            return hidden
        tokens = hidden[:, cfg.prefix_tokens:]
        side = cfg.input_size // cfg.tower_config.patch_size
        if tokens.shape[1] != side * side:
            raise ValueError(
                f"the {cfg.tower_config.model_type} tower returned {tokens.shape[1]} tokens after dropping "
                f"{cfg.prefix_tokens} prefix tokens, not a {side}x{side} patch grid: set num_prefix_tokens")
        return tokens_to_map(tokens, side, side)

    def load_tower_weights(self, source) -> None:
        """Weights saved by the tower's own library: a folder (or Hub id) written by its
        ``save_pretrained``, or a state dict of the tower."""
        if isinstance(source, dict):
            state = source
        else:
            state = type(self.tower).from_pretrained(source, config=self.config.tower_config).state_dict()
        self.tower.load_state_dict(state, strict=True)


def _tiny_vit(model_type: str, **extra) -> dict:
    return dict(model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, patch_size=8, image_size=64, **extra)


# One registration per tower family (the name is the config slot and the weight prefix); any
# other transformers vision model is one more line: register_expert("mae", EagleHFExpertConfig,
# tiny=dict(tower_config=dict(model_type="vit_mae", ...)))(EagleHFExpert).
register_expert("siglip", EagleHFExpertConfig, "SigLIP vision tower (transformers)",
                tiny=dict(tower_config=_tiny_vit("siglip_vision_model", vision_use_head=False)),
                full_size=dict(tower_config=dict(model_type="siglip_vision_model", hidden_size=1152,
                                                 intermediate_size=4304, num_hidden_layers=27,
                                                 num_attention_heads=16, patch_size=14, image_size=384,
                                                 vision_use_head=False)))(EagleHFExpert)
register_expert("siglip2", EagleHFExpertConfig, "SigLIP2 (NaFlex) vision tower (transformers)",
                tiny=dict(tower_config={**_tiny_vit("siglip2_vision_model", vision_use_head=False), "num_patches": 64},
                          input_size=64),
                full_size=dict(tower_config=dict(model_type="siglip2_vision_model", hidden_size=1152,
                                                 intermediate_size=4304, num_hidden_layers=27,
                                                 num_attention_heads=16, patch_size=16, num_patches=576,
                                                 vision_use_head=False), input_size=384))(EagleHFExpert)
register_expert("dinov2", EagleHFExpertConfig, "DINOv2 (with registers) vision tower (transformers)",
                tiny=dict(tower_config=dict(_tiny_vit("dinov2_with_registers", num_register_tokens=2),
                                            mlp_ratio=2)),
                full_size=dict(tower_config=dict(model_type="dinov2_with_registers", hidden_size=1024,
                                                 num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                                                 image_size=518, num_register_tokens=4)))(EagleHFExpert)
register_expert("convnextv2", EagleHFExpertConfig, "ConvNeXt V2 (transformers)",
                tiny=dict(tower_config=dict(model_type="convnextv2", hidden_sizes=[8, 16, 24, 32],
                                            depths=[1, 1, 1, 1], image_size=64), feature_layer=3, input_size=64),
                full_size=dict(tower_config=dict(model_type="convnextv2", hidden_sizes=[352, 704, 1408, 2816],
                                                 depths=[3, 3, 27, 3], image_size=1024),
                               input_size=1024))(EagleHFExpert)

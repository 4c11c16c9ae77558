"""SAM ViT image-encoder expert (EAGLE's ``sam-1024``) with EAGLE's short neck."""


import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.models.sam.configuration_sam import SamVisionConfig
from transformers.models.sam.modeling_sam import (
    SamVisionAttention,
    SamVisionEncoder,
    SamVisionLayer,
    SamVisionSdpaAttention,
)

from .registry import VisionExpertMixin, register_expert


@strict
class EagleSamExpertConfig(SamVisionConfig):
    """`SamVisionConfig`; EAGLE keeps only the neck's 1x1 conv + LayerNorm and folds each
    ``pixel_unshuffle`` x ``pixel_unshuffle`` block of the map into channels."""

    model_type = "eagle_vl_sam"
    base_config_key = "sam_config"

    pixel_unshuffle: int = 2

    def validate_patch_grid(self):
        # The patch grid must tile the input and fold evenly into pixel_unshuffle blocks; otherwise
        # the encoder dies deep in pixel_unshuffle.
        size, patch, fold = self.input_size, self.patch_size, self.pixel_unshuffle
        if isinstance(size, int) and isinstance(patch, int) and isinstance(fold, int) and min(size, patch, fold) > 0:
            if size % patch or (size // patch) % fold:
                raise ValueError(
                    f"sam_config.image_size={size} must be a multiple of patch_size ({patch}) times pixel_unshuffle "
                    f"({fold}), i.e. of {patch * fold}; e.g. image_size={max(1, round(size / (patch * fold))) * patch * fold}"
                )

    @property
    def input_size(self) -> int:
        # SAM's absolute position table fixes the input size.
        return self.image_size if isinstance(self.image_size, int) else self.image_size[0]

    @property
    def out_channels(self) -> int:
        return self.output_channels * self.pixel_unshuffle**2


class EagleSamShortNeck(nn.Module):
    """1x1 conv + channels-first LayerNorm whose statistics are taken in float32 (as the
    original neck does, so half-precision runs normalise the same way)."""

    def __init__(self, config: EagleSamExpertConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.hidden_size, config.output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = EagleChannelsFirstLayerNorm(config.output_channels, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm1(self.conv1(hidden_states.permute(0, 3, 1, 2)))


class EagleChannelsFirstLayerNorm(nn.Module):
    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = ((x - mean) / torch.sqrt(var + self.eps)).to(dtype)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class EagleSamVisionAttention(SamVisionAttention):
    """SAM's attention, choosing eager or SDPA when called: transformers' SAM picks the class once
    at construction, so `set_attn_implementation` would not reach it."""

    def __init__(self, config: EagleSamExpertConfig, window_size: int):
        super().__init__(config, window_size)
        self.config = config

    def forward(self, hidden_states: torch.Tensor, output_attentions=None):
        if self.config._attn_implementation == "eager":
            return SamVisionAttention.forward(self, hidden_states, output_attentions)
        return SamVisionSdpaAttention.forward(self, hidden_states, output_attentions)


# facebook/sam-vit-large image encoder.
FULL_SIZE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_dim=4096, image_size=1024,
                 patch_size=16, global_attn_indexes=[5, 11, 17, 23], window_size=14, output_channels=256,
                 layer_norm_eps=1e-6)
# SamVisionConfig defaults to initializer_range=1e-10 (the release is never trained from scratch);
# at that scale a fresh tiny SAM outputs ~0, so the tiny preset uses 0.02.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_dim=64, image_size=64, patch_size=8,
            global_attn_indexes=[1], window_size=4, output_channels=8, initializer_range=0.02)


@register_expert("sam", EagleSamExpertConfig, "SAM ViT image encoder (transformers SAM modules) + short neck",
                 tiny=TINY, full_size=FULL_SIZE)
class EagleSamExpert(VisionExpertMixin, SamVisionEncoder):
    config: EagleSamExpertConfig
    _no_split_modules = ["SamVisionLayer"]
    _can_record_outputs = {"hidden_states": SamVisionLayer, "attentions": EagleSamVisionAttention}

    def __init__(self, config: EagleSamExpertConfig):
        super().__init__(config)
        for layer in self.layers:
            layer.attn = EagleSamVisionAttention(config, layer.window_size)
        self.neck = EagleSamShortNeck(config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, EagleChannelsFirstLayerNorm):
            from transformers import initialization as init

            init.ones_(module.weight)
            init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        # The original forgot this cast (quirk #9); mixed dtypes would crash.
        pixel_values = pixel_values.to(self.patch_embed.projection.weight.dtype)
        features = super().forward(pixel_values, **kwargs).last_hidden_state
        if self.config.pixel_unshuffle > 1:
            features = F.pixel_unshuffle(features, self.config.pixel_unshuffle)
        return features

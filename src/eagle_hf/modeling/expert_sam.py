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


@register_expert("sam", EagleSamExpertConfig, "SAM ViT image encoder (transformers SAM modules) + short neck")
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

"""The mixture of vision experts: one image in, one fused token grid out."""


from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_eagle import EagleVisionConfig
from .registry import get_expert


@dataclass
class EagleVisionOutput(BaseModelOutputWithPooling):
    """``last_hidden_state``: fused features [B, grid**2, sum(channels)] in ``expert_order``;
    ``expert_features``: each expert's block of it, keyed by expert name (when asked for)."""

    expert_features: dict[str, torch.Tensor] | None = None


def resize_bilinear(x: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    # EAGLE resamples inputs and feature maps with align_corners=True bilinear in float32.
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True).to(dtype)


class EagleVisionTower(PreTrainedModel):
    """Runs every expert on the shared image and concatenates their resampled maps.

    Experts are named children (``self.clip``, ``self.sam``, ...) so that each one's weights
    live under its name, and transformers collects their `_no_split_modules` and pushes
    ``attn_implementation`` down to them.
    """

    config: EagleVisionConfig
    base_model_prefix = "vision_tower"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: EagleVisionConfig):
        super().__init__(config)
        for name in config.expert_order:
            self.add_module(name, get_expert(name).model_class(config.expert_config(name)))
        mean = torch.tensor(config.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.copy_(self.image_mean, torch.tensor(self.config.image_mean).view(1, -1, 1, 1))
            init.copy_(self.image_std, torch.tensor(self.config.image_std).view(1, -1, 1, 1))

    @property
    def experts(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in self.config.expert_order}

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"pixel_values must be a [batch, 3, {size}, {size}] tensor, got {shape}")
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"pixel_values are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but this model's experts share a "
                f"{size}x{size} input; preprocess images with the model's image processor"
            )

    def expert_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each expert's input, computing every distinct (size, value space) only once."""
        cache: dict[tuple[int, str], torch.Tensor] = {}
        inputs = {}
        for name, expert in self.experts.items():
            key = (expert.input_size, expert.input_space)
            if key not in cache:
                x = pixel_values
                if expert.input_space == "pixels_255":
                    # Undo the normalisation in the input dtype, as the original did.
                    mean, std = self.image_mean.to(x.dtype), self.image_std.to(x.dtype)
                    x = (x * std + mean) * 255
                elif expert.input_space != "normalized":
                    raise ValueError(f"expert {name!r} declares an unknown input_space {expert.input_space!r}")
                if expert.input_size != self.config.image_size:
                    x = resize_bilinear(x, expert.input_size, x.dtype)
                cache[key] = x
            inputs[name] = cache[key]
        return inputs

    def forward(self, pixel_values: torch.Tensor, output_expert_features: bool = False, return_dict: bool = True,
                **kwargs) -> EagleVisionOutput:
        self.check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(self.dtype)
        grid = self.config.grid_size
        blocks = {}
        for name, x in self.expert_inputs(pixel_values).items():
            feature_map = self.experts[name](x)
            if feature_map.shape[-2:] != (grid, grid):
                feature_map = resize_bilinear(feature_map, grid, pixel_values.dtype)
            blocks[name] = feature_map.flatten(2).transpose(1, 2).to(pixel_values.dtype)
        fused = torch.cat(list(blocks.values()), dim=-1)
        return EagleVisionOutput(last_hidden_state=fused, expert_features=blocks if output_expert_features else None)

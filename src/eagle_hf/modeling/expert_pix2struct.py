"""Pix2Struct encoder expert (EAGLE's ``pix2struct-1024``).

The original sent every image through the CPU `Pix2StructImageProcessor`. Here the same
steps (per-image standardisation, antialiased bilinear resize to the largest patch grid that
fits ``max_patches``, patch flattening with 1-based row/column ids, zero padding) run on the
tensor, on the model's device.
"""


import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers.models.pix2struct.configuration_pix2struct import Pix2StructVisionConfig
from transformers.models.pix2struct.modeling_pix2struct import (
    Pix2StructVisionAttention,
    Pix2StructVisionLayer,
    Pix2StructVisionModel,
)

from .registry import VisionExpertMixin, register_expert


@strict
class EaglePix2StructExpertConfig(Pix2StructVisionConfig):
    model_type = "eagle_vl_pix2struct"
    base_config_key = "pix2struct_config"

    input_size: int = 1024
    max_patches: int = 2048
    patch_size: int = 16

    def validate_patches(self):
        if 3 * self.patch_size**2 != self.patch_embed_hidden_size:
            raise ValueError(
                f"patch_embed_hidden_size {self.patch_embed_hidden_size} must equal "
                f"3 * patch_size**2 = {3 * self.patch_size**2} (RGB patches)"
            )

    @property
    def out_channels(self) -> int:
        return self.hidden_size

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of patches for an image, as Pix2Struct's processor chooses them."""
        p = self.patch_size
        scale = math.sqrt(self.max_patches * (p / height) * (p / width))
        rows = max(min(math.floor(scale * height / p), self.max_patches), 1)
        cols = max(min(math.floor(scale * width / p), self.max_patches), 1)
        return rows, cols


# google/pix2struct-large encoder.
FULL_SIZE = dict(hidden_size=1536, num_hidden_layers=18, num_attention_heads=24, d_kv=64, d_ff=3968,
                 dense_act_fn="gelu_new", layer_norm_eps=1e-6, patch_embed_hidden_size=768, seq_len=4096,
                 input_size=1024, max_patches=2048)
# As for SAM, the 1e-10 default init would make a fresh tiny Pix2Struct ignore the image.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, d_kv=8, d_ff=64, seq_len=128,
            patch_embed_hidden_size=192, patch_size=8, max_patches=48, input_size=64, initializer_range=0.02)


@register_expert("pix2struct", EaglePix2StructExpertConfig, "Pix2Struct vision encoder (transformers modules)",
                 tiny=TINY, full_size=FULL_SIZE)
class EaglePix2StructExpert(VisionExpertMixin, Pix2StructVisionModel):
    config: EaglePix2StructExpertConfig
    input_space = "pixels_255"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Which modules the mixture records for output_hidden_states / output_attentions.
    _can_record_outputs = {"hidden_states": Pix2StructVisionLayer, "attentions": Pix2StructVisionAttention}

    def make_patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """[B, C, H, W] pixels in 0..255 -> (flattened_patches [B, max_patches, 2 + C*p*p], mask, (rows, cols))."""
        cfg = self.config
        batch, channels, height, width = pixels.shape
        x = pixels.float()
        # Per-image standardisation; statistics in float64 so the float32 mean/std are correctly rounded.
        flat = x.reshape(batch, -1).double()
        mean = flat.mean(1).float()
        std = flat.std(1, unbiased=False).float()
        std = torch.clamp(std, min=1.0 / math.sqrt(flat.shape[1]))
        x = (x - mean[:, None, None, None]) / std[:, None, None, None]
        rows, cols = cfg.patch_grid(height, width)
        p = cfg.patch_size
        x = F.interpolate(x, size=(rows * p, cols * p), mode="bilinear", align_corners=False, antialias=True)
        # Patch vectors are flattened in (patch row, patch column, channel) order.
        patches = x.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(batch, rows * cols, p * p * channels)
        ids = torch.arange(rows * cols, device=x.device)
        row_ids = (ids // cols + 1).float()[None, :, None].expand(batch, -1, 1)
        col_ids = (ids % cols + 1).float()[None, :, None].expand(batch, -1, 1)
        patches = torch.cat([row_ids, col_ids, patches], dim=-1)
        pad = cfg.max_patches - rows * cols
        patches = F.pad(patches, (0, 0, 0, pad))
        mask = torch.zeros(batch, cfg.max_patches, device=x.device)
        mask[:, : rows * cols] = 1
        return patches, mask, (rows, cols)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        patches, mask, (rows, cols) = self.make_patches(pixel_values)
        dtype = self.embeddings.patch_projection.weight.dtype
        hidden = super().forward(flattened_patches=patches.to(dtype), attention_mask=mask.to(dtype), **kwargs)
        tokens = hidden.last_hidden_state[:, : rows * cols]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)

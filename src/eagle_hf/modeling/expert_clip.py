"""CLIP ViT expert (EAGLE's ``clip-448`` and the LLaVA-style single CLIP tower)."""


import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.models.clip.configuration_clip import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPPreTrainedModel, CLIPVisionEmbeddings

from .registry import VisionExpertMixin, register_expert, tokens_to_map


@strict
class EagleClipExpertConfig(CLIPVisionConfig):
    """`CLIPVisionConfig` plus how EAGLE reads features out of it.

    ``image_size`` is the resolution of the position table in the weights; ``input_size`` is
    the resolution the expert is fed (the table is resampled when they differ).
    EAGLE's ``clip-448`` drops the class token *before* the encoder and uses the last layer
    without post-norm; LLaVA's tower keeps it through the encoder and reads layer -2.
    """

    model_type = "eagle_vl_clip"
    base_config_key = "clip_config"

    input_size: int | None = None
    feature_layer: int = -1
    drop_cls_before_encoder: bool = True
    use_post_layernorm: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.input_size is None:
            self.input_size = self.image_size

    def validate_feature_layer(self):
        n = self.num_hidden_layers
        if not -n - 1 <= self.feature_layer <= n:
            raise ValueError(f"feature_layer={self.feature_layer} is outside the {n} layers of this CLIP")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def out_channels(self) -> int:
        return self.hidden_size

    @property
    def num_layers_used(self) -> int:
        # hidden_states[k] is the output of k layers (0 = embeddings), negative k counts from the end.
        k = self.feature_layer
        return k if k >= 0 else self.num_hidden_layers + 1 + k


class EagleClipEmbeddings(CLIPVisionEmbeddings):
    """CLIP's patch + class + position embeddings, with the original HR-CLIP resampling of the position
    table. Its own forward (same weights and names as `CLIPVisionEmbeddings`), so that accelerate's
    offload hooks, which load a module's weights when it is called, see every weight used here."""

    def position_table(self, grid: int, dtype: torch.dtype) -> torch.Tensor:
        table = self.position_embedding(self.position_ids[0])  # called, not `.weight`: see the class docstring
        cls_pos, patch_pos = table[:1], table[1:]
        trained = int(round(patch_pos.shape[0] ** 0.5))
        if trained != grid:
            # Same resampling as the original HR-CLIP tower: bicubic with antialias, in float32.
            dim = patch_pos.shape[-1]
            grid_pos = patch_pos.reshape(1, trained, trained, dim).permute(0, 3, 1, 2).float()
            grid_pos = F.interpolate(grid_pos, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
            patch_pos = grid_pos.permute(0, 2, 3, 1).reshape(grid * grid, dim).to(table.dtype)
        return torch.cat([cls_pos, patch_pos]).to(dtype)

    def forward(self, pixel_values: torch.Tensor, keep_cls: bool = False) -> tuple[torch.Tensor, int, int]:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        grid_h, grid_w = patches.shape[-2:]
        if grid_h != grid_w:
            raise ValueError(f"CLIP expert expects a square input, got a {grid_h}x{grid_w} patch grid")
        patches = patches.flatten(2).transpose(1, 2)
        pos = self.position_table(grid_h, patches.dtype)
        hidden = patches + pos[1:]
        if keep_cls:
            cls = (self.class_embedding.to(patches.dtype) + pos[0]).expand(patches.shape[0], 1, -1)
            hidden = torch.cat([cls, hidden], dim=1)
        return hidden, grid_h, grid_w


# openai/clip-vit-large-patch14-336, run at 336 px as EAGLE's "clip-448" does.
FULL_SIZE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14, image_size=336, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
            image_size=48, projection_dim=32)


@register_expert("clip", EagleClipExpertConfig, "CLIP ViT (transformers CLIP modules)", tiny=TINY,
                 full_size=FULL_SIZE)
class EagleClipExpert(VisionExpertMixin, CLIPPreTrainedModel):
    config: EagleClipExpertConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CLIPEncoderLayer"]

    def __init__(self, config: EagleClipExpertConfig):
        super().__init__(config)
        self.embeddings = EagleClipEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def unused_parameters(self) -> list:
        # EAGLE's clip-448 drops the class token before the encoder and skips the post-LayerNorm.
        unused = []
        if self.config.drop_cls_before_encoder:
            unused.append(self.embeddings.class_embedding)
        if not self.config.use_post_layernorm:
            unused += list(self.post_layernorm.parameters())
        return unused

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        cfg = self.config
        hidden, grid_h, grid_w = self.embeddings(pixel_values, keep_cls=not cfg.drop_cls_before_encoder)
        hidden = self.pre_layrnorm(hidden)
        for layer in self.encoder.layers[: cfg.num_layers_used]:
            hidden = layer(hidden, None, **kwargs)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        if cfg.use_post_layernorm:
            hidden = self.post_layernorm(hidden)
        if not cfg.drop_cls_before_encoder:
            hidden = hidden[:, 1:]
        return tokens_to_map(hidden, grid_h, grid_w)

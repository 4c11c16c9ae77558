"""SAM ViT image-encoder expert (EAGLE's ``sam-1024``) with EAGLE's short neck."""


import threading

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.models.sam.configuration_sam import SamVisionConfig
from transformers.models.sam.modeling_sam import (
    SamVisionAttention,
    SamVisionEncoder,
    SamVisionLayer,
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


def decomposed_rel_pos_bias(attn: SamVisionAttention, query: torch.Tensor, height: int, width: int,
                            scratch: "BiasScratch | None" = None) -> torch.Tensor:
    """SAM's decomposed relative-position bias ``[B, heads, h*w, h*w]``, written once into one
    contiguous buffer (from ``scratch`` when one is given). (The broadcast sum transformers forms
    is not contiguous, so reshaping it for the attention mask copies the whole ``heads x L x L``
    tensor again: 1 GiB per global layer.)"""
    batch, heads, _, head_dim = query.shape
    query = query.reshape(batch, heads, height, width, head_dim)
    # einsum returns permuted strides; with both terms contiguous (they are small) the broadcast
    # sum is laid out contiguously and the reshape below is a view.
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", query, attn.get_rel_pos(height, height, attn.rel_pos_h)).contiguous()
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", query, attn.get_rel_pos(width, width, attn.rel_pos_w)).contiguous()
    out = scratch.get((*rel_h.shape, width), rel_h) if scratch is not None else None
    bias = torch.add(rel_h[..., :, None], rel_w[..., None, :], out=out)
    return bias.view(batch, heads, height * width, height * width)


def linear_into_scratch(linear: nn.Linear, x: torch.Tensor, scratch: "BiasScratch") -> torch.Tensor:
    """``linear(x)``, written into a buffer of ``scratch`` when it hands one out (no autograd),
    else a tensor of its own. Weights that are not on ``x``'s device (on ``meta`` under accelerate's
    disk offload, which loads them only when the module is called) go through the module's call."""
    if linear.bias is None or linear.weight.device != x.device:
        return linear(x)
    out = scratch.get((*x.shape[:-1], linear.out_features), x)
    if out is None:
        return linear(x)
    torch.addmm(linear.bias, x.reshape(-1, linear.in_features), linear.weight.T, out=out.view(-1, linear.out_features))
    return out


class BiasScratch:
    """One buffer per bias shape, shared by an expert's layers for one forward without autograd
    (also used for the qkv projection, its padded windows and the MLP's wide activation: see
    `linear_into_scratch` and `EagleSamVisionLayer._mlp`).

    Every global layer's bias has one shape (1 GiB in float32 at full size) and every windowed
    layer's another. A fresh buffer that large comes from new pages each time (glibc maps it
    anew and the kernel zero-fills it on first touch), which costs more than writing the bias:
    reusing one buffer took the full-size SAM forward from 9.8 to 8.7 s in bf16. Under autograd a
    buffer cannot be shared (SDPA saves its mask for the backward), so there it hands out none.
    The buffers are per thread (a server may run one model in several) and live only inside
    ``with scratch:``; a copied or pickled model gets a new, empty scratch."""

    def __init__(self):
        self._local = threading.local()

    def __reduce__(self):
        return BiasScratch, ()

    def __enter__(self):
        self._local.buffers = {}
        return self

    def __exit__(self, *exc):
        self._local.buffers = None

    def get(self, shape: tuple, like: torch.Tensor) -> torch.Tensor | None:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None or torch.is_grad_enabled():
            return None
        key = (shape, like.dtype, like.device)
        if key not in buffers:
            buffers[key] = like.new_empty(shape)
        return buffers[key]


class EagleSamVisionAttention(SamVisionAttention):
    """SAM's attention, choosing eager or SDPA when called: transformers' SAM picks the class once
    at construction, so `set_attn_implementation` would not reach it.

    The SDPA path moves less data than transformers' (same weights, same numbers):

    * the relative-position bias is built once, contiguously, as SDPA's ``attn_mask``;
    * called with ``window_size`` (by `EagleSamVisionLayer`), it applies ``qkv`` before the window
      partition and ``proj`` after it: per-token linear maps commute with it, and a zero-padded
      (normed) token's ``qkv`` is just the bias, so padded tokens cost no matmul (64 -> 70 pads
      16 % of the tokens at full size) and each direction of the partition is one copy."""

    def __init__(self, config: EagleSamExpertConfig, window_size: int, scratch: BiasScratch | None = None):
        super().__init__(config, window_size)
        self.config = config
        # A layer built on its own gets a scratch of its own (it hands out nothing outside `with`).
        self.scratch = BiasScratch() if scratch is None else scratch

    def forward(self, hidden_states: torch.Tensor, output_attentions=None, window_size: int = 0):
        if self.config._attn_implementation == "eager":
            return SamVisionAttention.forward(self, hidden_states, output_attentions)
        batch, height, width, channels = hidden_states.shape
        heads, window, scratch = self.num_attention_heads, window_size, self.scratch
        qkv = linear_into_scratch(self.qkv, hidden_states, scratch)
        if window > 0:
            pad_height, pad_width = -(-height // window) * window, -(-width // window) * window
            if (pad_height, pad_width) != (height, width):
                shape = (batch, pad_height, pad_width, 3 * channels)
                padded = scratch.get(shape, qkv)
                padded = qkv.new_empty(shape) if padded is None else padded
                fill = self.qkv.bias if self.qkv.bias is not None else 0.0
                padded[:, height:] = fill
                padded[:, :height, width:] = fill
                padded[:, :height, :width] = qkv
                qkv = padded
            rows, cols = pad_height // window, pad_width // window
            qkv = qkv.view(batch, rows, window, cols, window, 3 * channels).transpose(2, 3)
            windows = scratch.get(qkv.shape, qkv)
            qkv = qkv.contiguous() if windows is None else windows.copy_(qkv)
            tokens_h = tokens_w = window
        else:
            rows = cols = 1
            tokens_h, tokens_w = height, width
        qkv = qkv.reshape(batch * rows * cols, tokens_h * tokens_w, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        bias = decomposed_rel_pos_bias(self, query, tokens_h, tokens_w, scratch) if self.use_rel_pos else None
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)
        out = out.transpose(1, 2)  # [windows, tokens, heads, head_dim]
        if window > 0:
            out = out.reshape(batch, rows, cols, window, window, channels).transpose(2, 3)
            out = out.reshape(batch, rows * window, cols * window, channels)[:, :height, :width]
        else:
            out = out.reshape(batch, height, width, channels)
        return self.proj(out), None


class EagleSamVisionLayer(SamVisionLayer):
    """`SamVisionLayer` that, under SDPA, hands the window partition to its attention (see
    `EagleSamVisionAttention`); with ``attn_implementation="eager"`` transformers' path runs as is."""

    def __init__(self, config: EagleSamExpertConfig, window_size: int):
        super().__init__(config, window_size)
        self.attn = EagleSamVisionAttention(config, window_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.attn.config._attn_implementation == "eager":
            return super().forward(hidden_states)
        attn_output, _ = self.attn(self.layer_norm1(hidden_states), window_size=self.window_size)
        hidden_states = hidden_states + attn_output
        return hidden_states + self._mlp(self.layer_norm2(hidden_states))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``self.mlp(x)``, with its wide activation (``mlp_dim`` per token, 64 MiB at full size in
        float32) written into one buffer that every layer reuses when there is no autograd (see
        `BiasScratch`), and the GELU applied in place. A fresh block that large is new pages on
        every call (glibc maps anything over 32 MiB anew): their first-touch page faults cost more
        than the bias fill and the GELU themselves (41 and 35 ms against 2 and 5 ms per layer,
        full size, 2-core AMD EPYC)."""
        mlp = self.mlp
        hidden = linear_into_scratch(mlp.lin1, x, self.attn.scratch)
        if hidden.requires_grad or self.attn.config.hidden_act != "gelu":
            return mlp.lin2(mlp.act(hidden))
        # Exact GELU, as ACT2FN["gelu"] computes it, in place: without autograd nothing keeps `hidden`.
        return mlp.lin2(torch.ops.aten.gelu_(hidden))


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
    _no_split_modules = ["EagleSamVisionLayer"]
    _can_record_outputs = {"hidden_states": EagleSamVisionLayer, "attentions": EagleSamVisionAttention}

    def __init__(self, config: EagleSamExpertConfig):
        super().__init__(config)
        self.bias_scratch = BiasScratch()
        for layer in self.layers:
            # eagle-hf's layer forward on the modules already built (swapping the class, not
            # rebuilding the layer, so the encoder is not allocated twice)
            layer.__class__ = EagleSamVisionLayer
            layer.attn = EagleSamVisionAttention(config, layer.window_size, self.bias_scratch)
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
        with self.bias_scratch:
            features = super().forward(pixel_values, **kwargs).last_hidden_state
        if self.config.pixel_unshuffle > 1:
            features = F.pixel_unshuffle(features, self.config.pixel_unshuffle)
        return features

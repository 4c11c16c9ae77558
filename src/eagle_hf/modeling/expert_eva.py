"""EVA-02 ViTDet backbone expert (EAGLE's ``det-1024``: EVA-02-L/16 from the COCO detector).

No library ships this variant (window + global attention with two 2-D RoPE tables,
SwiGLU with sub-LN, a 14x14 absolute table resized to the input grid), so it is written
here, keeping the original parameter names so checkpoints load without renaming.
"""


import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .registry import VisionExpertMixin, register_expert


@strict
class EagleEvaExpertConfig(PreTrainedConfig):
    model_type = "eagle_vl_eva"
    base_config_key = "eva_config"

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 2730
    patch_size: int = 16
    input_size: int = 1024
    pretrain_image_size: int = 224
    pos_embed_has_cls: bool = True
    window_size: int = 16
    global_attn_indexes: list[int] | tuple[int, ...] = (2, 5, 8, 11, 14, 17, 20, 23)
    rope_theta: float = 10000.0
    rope_pt_seq_len: int = 16
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def validate_geometry(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads")
        if (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError("EVA-02 2-D RoPE needs a head dim divisible by 4")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.grid % self.window_size:
            raise ValueError(f"the {self.grid}x{self.grid} patch grid does not tile into {self.window_size} windows")

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def out_channels(self) -> int:
        return self.hidden_size


def eva_rope_table(side: int, head_dim: int, theta: float, pt_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [side*side, head_dim] of EVA-02's 2-D RoPE: row angles fill the first half
    of the head dim, column angles the second, each frequency repeated for an adjacent pair."""
    dim = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))
    t = torch.arange(side, dtype=torch.float32) / side * pt_seq_len
    angles = torch.repeat_interleave(t[:, None] * freqs[None, :], 2, dim=-1)
    grid = torch.cat([angles[:, None, :].expand(side, side, dim), angles[None, :, :].expand(side, side, dim)], dim=-1)
    grid = grid.reshape(side * side, head_dim)
    return grid.cos(), grid.sin()


class EagleEvaRope(nn.Module):
    """Holds one RoPE table pair. Persistent, because trained checkpoints carry them (rounded
    to the training dtype) and parity means using the saved values when they are present."""

    def __init__(self, side: int, config: EagleEvaExpertConfig):
        super().__init__()
        self.side = side
        cos, sin = eva_rope_table(side, config.hidden_size // config.num_attention_heads, config.rope_theta,
                                  config.rope_pt_seq_len)
        self.register_buffer("freqs_cos", cos)
        self.register_buffer("freqs_sin", sin)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        pairs = t.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return t * self.freqs_cos + rotated * self.freqs_sin


class EagleEvaPatchEmbed(nn.Module):
    def __init__(self, config: EagleEvaExpertConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def eva_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                        **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA-02's own eager attention, in the signature of transformers' attention interface.
    Unlike transformers' generic eager path it scales q before the product and takes the softmax
    in the activation dtype, as the original did (bit-level parity)."""
    weights = (query * scaling) @ key.transpose(-2, -1)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1).type_as(query)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


class EagleEvaAttention(nn.Module):
    """Bidirectional attention with 2-D RoPE; the kernel comes from transformers' attention
    interface (``config._attn_implementation``), so `set_attn_implementation` switches it at run time."""

    is_causal = False

    def __init__(self, config: EagleEvaExpertConfig):
        super().__init__()
        dim = config.hidden_size
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.scaling = self.scale
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: EagleEvaRope, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, n, dim = x.shape
        # Call the projections (not F.linear on their .weight): accelerate's offload hooks load a
        # module's weights only when that module runs.
        q = self.q_proj(x) + self.q_bias
        k = self.k_proj(x)
        v = self.v_proj(x) + self.v_bias
        q, k, v = (t.reshape(batch, n, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q = rope(q).type_as(v)
        k = rope(k).type_as(v)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eva_eager_attention)
        out, weights = attention(self, q, k, v, None, scaling=self.scaling, dropout=0.0, is_causal=False, **kwargs)
        return self.proj(out.reshape(batch, n, dim)), weights


# Output width per matmul row that keeps float32 rows cache-line (64-byte) aligned.
ALIGNED_WIDTH = 16


class EagleEvaSwiGLU(nn.Module):
    def __init__(self, config: EagleEvaExpertConfig):
        super().__init__()
        dim, hidden = config.hidden_size, config.intermediate_size
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self._hidden(self.w1, x)) * self._hidden(self.w2, x)))

    @staticmethod
    def _hidden(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)``. On the CPU, a width that is not a multiple of `ALIGNED_WIDTH` is computed
        zero-padded to one and sliced back: EVA-02-L's 2730-wide rows are not cache-line aligned,
        and MKL's matmul then runs at 0.72 of its rate (w1 and w2 at 4096 tokens, float32, 2-core
        AMD EPYC: 364 ms, padded to 2736: 253 ms). The padded columns are never read. On a GPU the
        two extra kernels cost more than they save at batch 1 (measured on an H200), and weights
        that are not on ``x``'s device (meta under accelerate's disk offload) go through the call."""
        pad = -linear.out_features % ALIGNED_WIDTH
        if not pad or x.device.type != "cpu" or linear.weight.device != x.device:
            return linear(x)
        bias = None if linear.bias is None else F.pad(linear.bias, (0, pad))
        return F.linear(x, F.pad(linear.weight, (0, 0, 0, pad)), bias)[..., : linear.out_features]


class EagleEvaBlock(GradientCheckpointingLayer):
    def __init__(self, config: EagleEvaExpertConfig, window_size: int):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = EagleEvaAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = EagleEvaSwiGLU(config)

    def forward(self, x: torch.Tensor, rope: EagleEvaRope) -> torch.Tensor:
        batch, height, width, dim = x.shape
        h = self.norm1(x)
        if self.window_size:
            ws = self.window_size
            h = h.reshape(batch, height // ws, ws, width // ws, ws, dim).permute(0, 1, 3, 2, 4, 5)
            h = self.attn(h.reshape(-1, ws * ws, dim), rope)[0]
            h = h.reshape(batch, height // ws, width // ws, ws, ws, dim).permute(0, 1, 3, 2, 4, 5)
        else:
            h = self.attn(h.reshape(batch, height * width, dim), rope)[0]
        x = x + h.reshape(batch, height, width, dim)
        return x + self.mlp(self.norm2(x))


# EVA-02-L/16 from the COCO (Objects365) ViTDet detector.
FULL_SIZE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=2730,
                 input_size=1024, window_size=16, global_attn_indexes=[2, 5, 8, 11, 14, 17, 20, 23])
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, patch_size=8,
            input_size=64, pretrain_image_size=32, window_size=4, global_attn_indexes=[1], rope_pt_seq_len=4)


@register_expert("eva", EagleEvaExpertConfig, "EVA-02 ViTDet backbone (window + global attention, 2-D RoPE)",
                 tiny=TINY, full_size=FULL_SIZE)
class EagleEvaExpert(VisionExpertMixin, PreTrainedModel):
    config: EagleEvaExpertConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "eva"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["EagleEvaBlock"]
    _can_record_outputs = {"hidden_states": EagleEvaBlock, "attentions": EagleEvaAttention}
    # The RoPE tables are recomputed from the config (`_init_weights`), so a checkpoint may lack them
    # (the originals save per-block aliases instead). transformers collects this from every child
    # model, so the mixture and the EAGLE model accept such checkpoints without knowing the names.
    _keys_to_ignore_on_load_missing = [r"\.rope_(win|glb)\.freqs_(cos|sin)$"]

    def __init__(self, config: EagleEvaExpertConfig):
        super().__init__(config)
        side = config.pretrain_image_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + int(config.pos_embed_has_cls), config.hidden_size))
        self.patch_embed = EagleEvaPatchEmbed(config)
        self.rope_win = EagleEvaRope(config.window_size, config)
        self.rope_glb = EagleEvaRope(config.grid, config)
        self.blocks = nn.ModuleList(
            EagleEvaBlock(config, 0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.num_hidden_layers)
        )
        self.gradient_checkpointing = False
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, EagleEvaRope):
            cos, sin = eva_rope_table(module.side, self.config.hidden_size // self.config.num_attention_heads,
                                      self.config.rope_theta, self.config.rope_pt_seq_len)
            init.copy_(module.freqs_cos, cos)
            init.copy_(module.freqs_sin, sin)
        elif isinstance(module, EagleEvaAttention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, EagleEvaExpert):
            init.trunc_normal_(module.pos_embed, std=self.config.initializer_range)

    def _abs_pos(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        table = self.pos_embed[:, int(self.config.pos_embed_has_cls):]
        side = int(math.isqrt(table.shape[1]))
        table = table.reshape(1, side, side, -1)
        if (side, side) != (height, width):
            table = F.interpolate(table.permute(0, 3, 1, 2).float(), size=(height, width), mode="bicubic",
                                  align_corners=False).permute(0, 2, 3, 1)
        return table.to(dtype)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        x = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        x = x + self._abs_pos(x.shape[1], x.shape[2], x.dtype)
        for block in self.blocks:
            x = block(x, self.rope_win if block.window_size else self.rope_glb)
        return x.permute(0, 3, 1, 2)

"""How the experts' feature maps become the image tokens the projector sees: the five fusions
the EAGLE paper compares (§3.3, its Table 3), chosen by ``EagleVisionConfig.fusion``.

A fusion is one ``nn.Module`` class registered in `FUSIONS`. Besides ``forward`` it declares,
from the vision config alone, what it hands the projector (``output_tokens``, ``output_width``)
and what it needs of the experts (``check``, which raises a message naming the field and the
fix). The config's ``num_image_tokens`` / ``hidden_size`` are those declarations, so the
processor's image-token count and the projector's input width follow from the config.

``forward(blocks, maps)`` gets, per expert in ``expert_order``, ``blocks[name]``: its map resampled
to the shared ``grid_size`` grid as tokens ``[B, grid**2, C]``, and, for fusions with
``uses_native_maps``, ``maps[name]``: its native map ``[B, C, h, w]``. It returns ``[B, tokens, width]``.

The fusions that use a low-resolution / high-resolution split (injection, patch mining,
deformable attention) take the *first* expert of ``expert_order`` as the low-resolution branch
(its tokens are the queries and set the width) and the others as the high-resolution branch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def resize_bilinear(x: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    # EAGLE resamples inputs and feature maps with align_corners=True bilinear in float32.
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True).to(dtype)


class EagleFusion(nn.Module):
    """Base class: the interface every fusion implements (see the module docstring)."""

    name: str = ""
    uses_native_maps = False
    needs_high_res = False

    @classmethod
    def output_tokens(cls, config) -> int:
        return config.grid_size**2

    @classmethod
    def output_width(cls, config) -> int:
        raise NotImplementedError

    @classmethod
    def check(cls, config) -> None:
        if cls.needs_high_res:
            low, *high = config.expert_order
            if not high:
                raise ValueError(
                    f"fusion={cls.name!r} fuses a low-resolution expert (the first of expert_order) with "
                    f"higher-resolution ones, but expert_order is {config.expert_order}: add a high-resolution "
                    "expert after it, or use fusion='channel_concat'")
            low_size = config.expert_config(low).input_size
            if not any(config.expert_config(n).input_size >= low_size for n in high):
                raise ValueError(
                    f"fusion={cls.name!r} needs a high-resolution branch, but every expert after {low!r} "
                    f"(input {low_size} px) sees a smaller image: put the lowest-resolution expert first in "
                    "expert_order")


FUSIONS: dict[str, type[EagleFusion]] = {}


def register_fusion(cls: type[EagleFusion]) -> type[EagleFusion]:
    FUSIONS[cls.name] = cls
    return cls


def get_fusion(name: str) -> type[EagleFusion]:
    try:
        return FUSIONS[name]
    except KeyError:
        raise ValueError(f"fusion {name!r} is not one of {', '.join(FUSIONS)}; set fusion to one of them") from None


def _low_width(config) -> int:
    return config.expert_channels[config.expert_order[0]]


def _check_heads(config, width: int) -> None:
    heads = config.fusion_num_heads
    if heads < 1 or width % heads:
        raise ValueError(
            f"fusion_num_heads={heads} does not divide the width {width} of the low-resolution expert "
            f"{config.expert_order[0]!r}: choose a divisor of {width}")


@register_fusion
class ChannelConcatFusion(EagleFusion):
    """EAGLE's choice and the releases': the grid tokens of all experts side by side on channels."""

    name = "channel_concat"

    def __init__(self, config):
        super().__init__()

    @classmethod
    def output_width(cls, config) -> int:
        return sum(config.expert_channels.values())

    def forward(self, blocks, maps=None):
        return torch.cat(list(blocks.values()), dim=-1)


@register_fusion
class SequenceAppendFusion(EagleFusion):
    """Each expert's grid tokens, projected to one width (``fusion_hidden_size``, default the widest
    expert), one expert after the other along the sequence: ``len(experts) * grid**2`` tokens."""

    name = "sequence_append"

    def __init__(self, config):
        super().__init__()
        width = self.output_width(config)
        self.proj = nn.ModuleDict({n: nn.Linear(c, width) for n, c in config.expert_channels.items()})

    @classmethod
    def output_tokens(cls, config) -> int:
        return len(config.expert_order) * config.grid_size**2

    @classmethod
    def output_width(cls, config) -> int:
        return config.fusion_hidden_size or max(config.expert_channels.values())

    @classmethod
    def check(cls, config) -> None:
        if config.fusion_hidden_size is not None and config.fusion_hidden_size < 1:
            raise ValueError(f"fusion_hidden_size must be positive (or None for the widest expert), "
                             f"got {config.fusion_hidden_size}")

    def forward(self, blocks, maps=None):
        return torch.cat([self.proj[n](x) for n, x in blocks.items()], dim=1)


@register_fusion
class InjectionFusion(EagleFusion):
    """LLaVA-HR's mixture-of-resolution adapter: the high-resolution features, projected to the
    low-resolution width, are added to the low-resolution tokens through a gate computed from both
    (``g = tanh(W2 relu(W1 [mean(low); mean(high)]))``). eagle-hf injects once, at the output of the
    low-resolution expert (the experts are opaque modules here), where LLaVA-HR injects between
    the stages of its ViT."""

    name = "injection"
    needs_high_res = True

    def __init__(self, config):
        super().__init__()
        low = _low_width(config)
        high = sum(config.expert_channels[n] for n in config.expert_order[1:])
        self.high_proj = nn.Sequential(nn.Linear(high, low), nn.GELU(), nn.Linear(low, low))
        self.gate = nn.Sequential(nn.Linear(2 * low, low // 2 or 1), nn.ReLU(), nn.Linear(low // 2 or 1, low))

    @classmethod
    def output_width(cls, config) -> int:
        return _low_width(config)

    def forward(self, blocks, maps=None):
        low, *high = blocks.values()
        high = self.high_proj(torch.cat(high, dim=-1))
        gate = torch.tanh(self.gate(torch.cat([low.mean(1), high.mean(1)], dim=-1)))
        return low + gate[:, None, :] * high


@register_fusion
class PatchMiningFusion(EagleFusion):
    """Mini-Gemini's patch-info mining: each low-resolution token queries the ``m x m`` high-resolution
    patches of its own cell (``m = fusion_mining_factor``; the high-resolution experts' native maps
    are resampled to ``grid * m`` and concatenated), multi-head cross-attention, added back."""

    name = "patch_mining"
    uses_native_maps = True
    needs_high_res = True

    def __init__(self, config):
        super().__init__()
        low = _low_width(config)
        high = sum(config.expert_channels[n] for n in config.expert_order[1:])
        self.grid, self.factor, self.heads = config.grid_size, config.fusion_mining_factor, config.fusion_num_heads
        self.norm_q = nn.LayerNorm(low)
        self.norm_kv = nn.LayerNorm(high)
        self.q = nn.Linear(low, low)
        self.kv = nn.Linear(high, 2 * low)
        self.out = nn.Linear(low, low)

    @classmethod
    def output_width(cls, config) -> int:
        return _low_width(config)

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        _check_heads(config, _low_width(config))
        if config.fusion_mining_factor < 1:
            raise ValueError(f"fusion_mining_factor must be >= 1 (high-resolution patches per grid cell side), "
                             f"got {config.fusion_mining_factor}")

    def forward(self, blocks, maps=None):
        low = blocks[next(iter(blocks))]
        g, m, heads = self.grid, self.factor, self.heads
        names = list(maps)[1:]
        high = torch.cat([resize_bilinear(maps[n], g * m, low.dtype) for n in names], dim=1)
        b, c = high.shape[:2]
        # [B, C, g*m, g*m] -> [B, g*g, m*m, C]: the m x m patches under each grid cell.
        high = high.reshape(b, c, g, m, g, m).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, m * m, c)
        width = low.shape[-1]
        q = self.q(self.norm_q(low)).reshape(b, g * g, 1, heads, width // heads).transpose(2, 3)
        k, v = self.kv(self.norm_kv(high)).reshape(b, g * g, m * m, 2, heads, width // heads).unbind(3)
        k, v = k.transpose(2, 3), v.transpose(2, 3)  # [B, g*g, heads, m*m, d]
        mined = F.scaled_dot_product_attention(q, k, v)  # [B, g*g, heads, 1, d]
        return low + self.out(mined.reshape(b, g * g, width))


@register_fusion
class DeformableFusion(EagleFusion):
    """Deformable attention (Deformable DETR's multi-scale form): each low-resolution token predicts
    ``fusion_num_points`` sampling offsets per head around its own location in every expert's
    native map, samples them bilinearly, and adds their attention-weighted sum back."""

    name = "deformable"
    uses_native_maps = True

    def __init__(self, config):
        super().__init__()
        width = _low_width(config)
        self.grid, self.heads, self.points = config.grid_size, config.fusion_num_heads, config.fusion_num_points
        self.levels = len(config.expert_order)
        self.value = nn.ModuleDict({n: nn.Conv2d(c, width, 1) for n, c in config.expert_channels.items()})
        self.norm_q = nn.LayerNorm(width)
        self.offsets = nn.Linear(width, self.heads * self.levels * self.points * 2)
        self.weights = nn.Linear(width, self.heads * self.levels * self.points)
        self.out = nn.Linear(width, width)

    @classmethod
    def output_width(cls, config) -> int:
        return _low_width(config)

    @classmethod
    def check(cls, config) -> None:
        _check_heads(config, _low_width(config))
        if config.fusion_num_points < 1:
            raise ValueError(f"fusion_num_points must be >= 1 (sampling points per head and map), "
                             f"got {config.fusion_num_points}")

    def init_offsets(self, init) -> None:
        # As Deformable DETR: no learned offset at first, the points of a head spread on a ring
        # (in grid cells) in that head's direction, so they start apart and get gradients.
        init.zeros_(self.offsets.weight)
        angle = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        ring = torch.stack([angle.cos(), angle.sin()], -1)[:, None, None, :]
        scale = torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        bias = (ring * scale).expand(self.heads, self.levels, self.points, 2)
        init.copy_(self.offsets.bias, bias.reshape(-1))

    def forward(self, blocks, maps=None):
        low = blocks[next(iter(blocks))]
        b, n, width = low.shape
        g, heads, levels, points, d = self.grid, self.heads, self.levels, self.points, width // self.heads
        query = self.norm_q(low)
        # Offsets are in grid cells; grid_sample's coordinates span [-1, 1] over the map.
        offsets = self.offsets(query).reshape(b, n, heads, levels, points, 2) * (2.0 / g)
        weights = self.weights(query).reshape(b, n, heads, levels * points).softmax(-1)
        centers = (torch.arange(g, device=low.device, dtype=low.dtype) + 0.5) * (2.0 / g) - 1
        ref = torch.stack(torch.meshgrid(centers, centers, indexing="xy"), -1).reshape(1, n, 1, 1, 1, 2)
        loc = ref + offsets  # [B, n, heads, levels, points, (x, y)]
        sampled = []
        for level, (name, fmap) in enumerate(maps.items()):
            value = self.value[name](fmap.to(low.dtype))  # [B, width, h, w]
            h, w = value.shape[-2:]
            value = value.reshape(b * heads, d, h, w)
            grid = loc[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(b * heads, n, points, 2)
            sampled.append(F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        # [B*heads, d, n, levels*points] weighted by [B*heads, 1, n, levels*points]
        sampled = torch.cat(sampled, dim=-1)
        attn = weights.permute(0, 2, 1, 3).reshape(b * heads, 1, n, levels * points)
        mixed = (sampled * attn).sum(-1).reshape(b, heads * d, n).transpose(1, 2)
        return low + self.out(mixed)

"""Pix2Struct encoder expert (EAGLE's ``pix2struct-1024``).

The original sent every image through the CPU `Pix2StructImageProcessor`. Here the same
steps (per-image standardisation, antialiased bilinear resize to the largest patch grid that
fits ``max_patches``, patch flattening with 1-based row/column ids, zero padding) run on the
tensor, on the model's device.
"""


import functools
import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers.activations import GELUTanh, NewGELUActivation
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


_ROW_BAND, _COLUMN_BAND = 16, 32  # output pixels per band of each pass; see resize_antialiased


@functools.lru_cache(maxsize=32)
def _resampling_bands(size_in: int, size_out: int, device: torch.device, rows: int) -> tuple:
    """torch's antialiased bilinear resampling of one axis (``F.interpolate(..., antialias=True)``) as
    bands of ``rows`` output pixels: ``(start, stop, lo, hi, weights[stop - start, hi - lo])``, where
    input pixels ``lo:hi`` are the only ones the band reads. The weights are torch's own: its kernel
    applied to the identity (the other axis kept, which at scale 1 is the identity too)."""
    eye = torch.eye(size_in).view(1, 1, size_in, size_in)
    weights = F.interpolate(eye, size=(size_out, size_in), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    bands = []
    for start in range(0, size_out, rows):
        band = weights[start:start + rows]
        used = band.ne(0).any(0).nonzero()
        lo, hi = int(used[0]), int(used[-1]) + 1
        bands.append((start, start + band.shape[0], lo, hi, band[:, lo:hi].contiguous().to(device)))
    return tuple(bands)


def resize_antialiased(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.interpolate(x, (height, width), mode="bilinear", antialias=True)`` of a float32 ``[B, C, H, W]``
    tensor, within float32 rounding, as small matmuls over the bands of each axis. Each output pixel
    reads 2 to 4 inputs, which torch's CPU kernel gathers one at a time; the dense bands (16 output
    rows against the ~24 input rows they span) waste most of their multiplies but run at the matmul
    rate: 3 x 1024² -> 720², one thread, 3.4 ms against 8.0 ms for ``F.interpolate`` on the AVX-512
    Intel machine (2026-12-04); on an AMD EPYC one the same day, 8.3 against 8.5 ms (its small
    matmuls are slower).

    Band heights, measured on that resize (one thread, the Intel machine): the row pass is fastest
    with short bands (16 output rows: each reads ~24 input rows of the whole width, which stay in L2),
    the column pass with 32 (the weights' columns are then one 32-wide matmul tile); 45 and 45 was
    4.1 ms, 90 and 90 7.4 ms."""
    rows = _resample_rows(x, height)
    if width == rows.shape[-1]:
        return rows
    out = torch.empty(*x.shape[:2], height, width, device=x.device, dtype=x.dtype)
    for start, stop, band in _resample_columns(rows, width, _COLUMN_BAND):
        out[..., start:stop] = band
    return out


def _resample_rows(x: torch.Tensor, height: int) -> torch.Tensor:
    """The row pass of `resize_antialiased` (``x`` itself when ``height`` is its height)."""
    batch, channels, in_h, in_w = x.shape
    if height == in_h:
        return x
    rows = torch.empty(batch, channels, height, in_w, device=x.device, dtype=x.dtype)
    for start, stop, lo, hi, weights in _resampling_bands(in_h, height, x.device, _ROW_BAND):
        torch.matmul(weights, x[:, :, lo:hi], out=rows[:, :, start:stop])
    return rows


def _resample_columns(rows: torch.Tensor, width: int, band: int):
    """The column pass of `resize_antialiased`, one band of ``band`` output columns at a time:
    yields ``(start, stop, [B, C, H, stop - start])``. Each band is written contiguously into one
    reused buffer (valid until the next band): a matmul into strided columns of the whole output
    costs a copy back (1.1 of 3.6 ms for 3 x 720 x 1024 -> 720 on the AMD machine)."""
    *lead, in_w = rows.shape
    if width == in_w:
        for start in range(0, width, band):
            yield start, min(start + band, width), rows[..., start:start + band]
        return
    flat = rows.reshape(-1, in_w)
    buffer = torch.empty(flat.shape[0] * band, device=rows.device, dtype=rows.dtype)
    for start, stop, lo, hi, weights in _resampling_bands(in_w, width, rows.device, band):
        out = buffer[: flat.shape[0] * (stop - start)].view(flat.shape[0], stop - start)
        torch.mm(flat[:, lo:hi], weights.T, out=out)
        yield start, stop, out.view(*lead, stop - start)


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
    takes_pixel_affine = True  # see VisionExpertMixin
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Which modules the mixture records for output_hidden_states / output_attentions.
    _can_record_outputs = {"hidden_states": Pix2StructVisionLayer, "attentions": Pix2StructVisionAttention}

    def __init__(self, config: EaglePix2StructExpertConfig):
        super().__init__(config)
        # The release's `gelu_new` is tanh-GELU composed of seven elementwise passes over the
        # [tokens, d_ff] activation; torch's fused tanh-GELU is the same function in one pass
        # (full size: 31 -> 6.5 ms per layer in bf16, 49 -> 5.7 ms in float32, with the same
        # float32 error against float64).
        for module in self.modules():
            if isinstance(getattr(module, "act", None), NewGELUActivation):
                module.act = GELUTanh()

    def make_patches(self, pixels: torch.Tensor, pixel_affine: tuple[torch.Tensor, torch.Tensor] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """[B, C, H, W] pixels in 0..255 -> (flattened_patches [B, max_patches, 2 + C*p*p], mask, (rows, cols)).

        ``pixel_affine``: per-channel ``(scale, offset)`` ([C] each) when ``pixels * scale + offset`` are
        the 0..255 pixels (the mixture hands over its normalised input this way). The affine is folded
        into the standardisation, so the de-normalised image is never written."""
        cfg = self.config
        batch, channels, height, width = pixels.shape
        rows, cols = cfg.patch_grid(height, width)
        p, n = cfg.patch_size, rows * cols
        if pixel_affine is None:
            pixel_affine = (torch.ones(channels), torch.zeros(channels))
        scale, offset = (t.to(pixels.device, torch.float64).reshape(channels) for t in pixel_affine)
        patches = torch.empty(batch, cfg.max_patches, 2 + p * p * channels, device=pixels.device)
        patches[:, n:] = 0
        band = p * max(1, _COLUMN_BAND // p)  # whole patch columns per band of the column pass
        # One image at a time: each step's buffers (a few MB) then stay in cache and are reused by the
        # allocator, where whole-batch ones (100 MB at batch 8) would be fresh pages on every call.
        for image, out in zip(pixels.float().split(1), patches.split(1)):
            # The statistics of the pixels over all channels, from each channel's (of an affine map of it).
            channel_mean, channel_var = self._row_moments(image.view(channels, -1))
            means = channel_mean * scale + offset
            mean = means.mean()
            var = (channel_var * scale.square()).mean() + (means - mean).square().mean()
            std = var.sqrt().clamp(min=1.0 / math.sqrt(image.numel()))
            # The processor standardises, then resizes. The resampling weights of each output pixel sum
            # to one, so resizing first and mapping the (about half as many) resized values is the same
            # map, up to float32 rounding; de-normalisation and standardisation are then one per-channel
            # scale and shift of the resized planes (contiguous per channel: in channels-last order the
            # per-channel factors would run 3 values at a time, 4x slower).
            gain, bias = ((scale / std).float().view(1, -1, 1, 1), ((offset - mean) / std).float().view(1, -1, 1, 1))
            # Patch vectors are flattened in (patch row, patch column, channel) order. Each band of
            # whole patch columns is mapped while it is in cache and copied straight into the output:
            # no resized image, no channels-last copy of it.
            grid = out[:, :n, 2:].view(1, rows, cols, p, p, channels)
            mapped = torch.empty(channels * rows * p * band, device=pixels.device)
            for start, stop, block in _resample_columns(_resample_rows(image, rows * p), cols * p, band):
                block = torch.mul(block, gain, out=mapped[: block.numel()].view(block.shape)).add_(bias)
                k = (stop - start) // p
                grid[:, :, start // p: stop // p].copy_(block.view(1, channels, rows, p, k, p).permute(0, 2, 4, 3, 5, 1))
        ids = torch.arange(n, device=pixels.device)
        patches[:, :n, 0] = (ids // cols + 1).float()
        patches[:, :n, 1] = (ids % cols + 1).float()
        mask = torch.zeros(batch, cfg.max_patches, device=pixels.device)
        mask[:, :n] = 1
        return patches, mask, (rows, cols)

    @staticmethod
    def _row_moments(x: torch.Tensor, chunk: int = 1 << 17) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 mean and population variance of each row of a float32 [R, N] tensor, in one pass.

        Each row goes through cache-sized chunks shifted by the row's first value (so that the sum of
        squares does not cancel, whatever the offset); each chunk's sum and sum of squares are torch's
        float32 reductions (cascaded: error a few float32 ulps of the chunk's absolute sum) and are
        added up in float64. Against float64 throughout: relative error ~3e-8 of the variance, ~1e-9
        of the spread for the mean, where the patches' bound is 1e-5; 3 x 1024², one thread: 1.4 ms,
        against 2.1 ms with float64 chunks and 16 ms for float32 ``torch.var_mean`` (2026-12-04).
        Row by row, because chunks spanning several rows gather from as many distant places (3x
        slower for 3 rows). Accumulated in tensors, not Python floats: no device sync per chunk."""
        rows, n = x.shape
        shifted, squared = (torch.empty(min(chunk, n), dtype=x.dtype, device=x.device) for _ in range(2))
        moments = torch.zeros(rows, 3, dtype=torch.float64, device=x.device)  # shift, sum, sum of squares
        for row, out in zip(x, moments):
            out[0] = row[0]
            for start in range(0, n, chunk):
                part = torch.sub(row[start:start + chunk], row[0], out=shifted[:min(chunk, n - start)])
                out[1] += part.sum()
                out[2] += torch.mul(part, part, out=squared[:part.numel()]).sum()
        shift, total, squares = moments.unbind(1)
        centred = total / n
        return centred + shift, (squares / n - centred.square()).clamp_(min=0)

    def forward(self, pixel_values: torch.Tensor, pixel_affine: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs) -> torch.Tensor:
        patches, mask, (rows, cols) = self.make_patches(pixel_values, pixel_affine)
        dtype = self.embeddings.patch_projection.weight.dtype
        hidden = super().forward(flattened_patches=patches.to(dtype), attention_mask=mask.to(dtype), **kwargs)
        tokens = hidden.last_hidden_state[:, : rows * cols]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)

"""The mixture of vision experts: one image in, one fused token grid out."""


from collections.abc import Collection
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder

from .configuration_eagle import EagleVisionConfig
from .fusion import DeformableFusion, get_fusion, resize_bilinear
from .registry import get_expert
from .validation import check_pixel_values

# ITU-R BT.601 luma weights (PIL's convert("L")), the grey of grayscale_experts in evaluation.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class EagleVisionOutput(BaseModelOutputWithPooling):
    """``last_hidden_state``: fused features [B, tokens, width] (``config.num_image_tokens`` x
    ``config.hidden_size``; for channel_concat grid**2 x the experts' channels in ``expert_order``);
    ``expert_features``: each expert's map on the grid [B, grid**2, C], keyed by expert name (when asked for).

    ``hidden_states`` (``output_hidden_states=True``) and ``attentions`` (``output_attentions=True``)
    are dicts keyed by expert name, in ``expert_order``, each holding a tuple in that expert's own
    layout: hidden states are the input of its first recorded layer followed by every layer's output
    (CLIP/Pix2Struct [B, N, C], SAM/EVA [B, h, w, C], ConvNeXt [B, C, h, w] per stage); attentions are
    each attention layer's weights [B*windows, heads, N, N] (an expert without attention layers, ConvNeXt,
    has an empty tuple). As in transformers, attention weights exist only where the attention
    implementation computes them (``eager``); others give ``None`` entries."""

    expert_features: dict[str, torch.Tensor] | None = None
    hidden_states: dict[str, tuple[torch.Tensor, ...]] | None = None
    attentions: dict[str, tuple[torch.Tensor | None, ...]] | None = None


def _recorder_specs(expert: torch.nn.Module, key: str) -> list[tuple[type, int]]:
    """(module class, output index) pairs an expert declares in transformers' `_can_record_outputs`."""
    specs = (getattr(type(expert), "_can_record_outputs", None) or {}).get(key) or []
    specs = specs if isinstance(specs, list) else [specs]
    default_index = 0 if key == "hidden_states" else 1
    return [(s.target_class, s.index) if isinstance(s, OutputRecorder) else (s, default_index) for s in specs]


class _ExpertRecorder:
    """Records one expert's layer outputs through forward hooks while it runs (the experts' own
    `_can_record_outputs` declare which modules; transformers' capture only works per model, and
    the mixture needs one record per expert)."""

    def __init__(self, expert: torch.nn.Module, keys: list[str]):
        self.records = {key: [] for key in keys}
        self.handles = []
        for key in keys:
            for cls, index in _recorder_specs(expert, key):
                for module in expert.modules():
                    if isinstance(module, cls):
                        self.handles.append(module.register_forward_hook(self._hook(key, index)))

    def _hook(self, key, index):
        def hook(module, args, output):
            record = self.records[key]
            if key == "hidden_states" and not record and args:
                record.append(args[0])
            record.append(output[index] if isinstance(output, (tuple, list)) else output)
        return hook

    def __enter__(self):
        return self.records

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


class EagleVisionTower(PreTrainedModel):
    """Runs every expert on the shared image, resamples their maps to the shared grid and fuses
    them with ``config.fusion`` (channel concatenation by default).

    Experts are named children (``self.clip``, ``self.sam``, ...) so that each one's weights
    live under its name, and transformers collects their `_no_split_modules` and pushes
    ``attn_implementation`` down to them. The fusion is the child ``fusion`` (channel
    concatenation has no weights, so the released checkpoints' keys are unchanged).
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
        self.fusion = get_fusion(config.fusion)(config)
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
        if isinstance(self.fusion, DeformableFusion) and module is self.fusion.offsets:
            # After the generic Linear init of the offsets layer, which would overwrite it.
            from transformers import initialization as init

            self.fusion.init_offsets(init)

    @property
    def experts(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in self.config.expert_order}

    def load_expert_weights(self, name: str, source) -> None:
        """Load a released tower into the expert slot ``name``: for transformers towers a folder (or Hub
        id) written by the tower's own ``save_pretrained`` (e.g. a ``SiglipVisionModel``), for timm
        experts a timm state dict or its file. The tower's config must match the slot's."""
        expert = self.experts.get(name)
        if expert is None:
            raise ValueError(f"this mixture has no expert {name!r}; its experts: {', '.join(self.config.expert_order)}")
        if not hasattr(expert, "load_tower_weights"):
            raise ValueError(f"expert {name!r} ({type(expert).__name__}) has no external checkpoint format; load "
                             "an eagle-hf checkpoint with from_pretrained instead")
        expert.load_tower_weights(source)

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        device = self.device
        if isinstance(pixel_values, torch.Tensor) and pixel_values.device != device and any(
                hasattr(m, "_hf_hook") for m in self.modules()):
            device = None  # accelerate's device-map hooks move the inputs to each expert themselves
        check_pixel_values(pixel_values, self.config, device)

    def grayscale(self, x: torch.Tensor, space: str) -> torch.Tensor:
        """``x`` (in ``space``) as a grey image in the same space: luminance in eval mode, random
        convex channel weights per image in training mode (``config.grayscale_experts``)."""
        mean, std = self.image_mean.to(x.dtype), self.image_std.to(x.dtype)
        if space == "pixels_255":
            mean, std = torch.zeros_like(mean), torch.ones_like(std)  # already pixel values
        pixels = x * std + mean
        if self.training:
            weights = torch.distributions.Dirichlet(torch.ones(3)).sample((x.shape[0],)).to(x.device, x.dtype)
            weights = weights.view(-1, 3, 1, 1)
        else:
            weights = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        grey = (pixels * weights).sum(1, keepdim=True).expand_as(pixels)
        return (grey - mean) / std

    def takes_pixel_affine(self, name: str, dtype: torch.dtype) -> bool:
        """Whether the forward hands expert ``name`` the normalised input and `pixel_affine` instead of
        its 0..255 pixels (see `VisionExpertMixin`): it then never writes the de-normalised image. Float32
        only: in lower precision the original de-normalised in the input dtype, and that rounding is part
        of its numbers (the parity fixtures')."""
        expert = self.experts[name]
        return (expert.input_space == "pixels_255" and getattr(expert, "takes_pixel_affine", False)
                and dtype == torch.float32 and name not in (self.config.grayscale_experts or ()))

    def pixel_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(scale, offset)``, float64: ``normalised * scale + offset`` are the 0..255 pixels."""
        mean, std = self.image_mean.double().view(-1), self.image_std.double().view(-1)
        return std * 255, mean * 255

    def expert_inputs(self, pixel_values: torch.Tensor, normalised: Collection[str] = ()) -> dict[str, torch.Tensor]:
        """Each expert's input, computing every distinct (size, value space[, grey]) only once. The
        experts named in ``normalised`` (the forward's: those that `takes_pixel_affine`) get the
        normalised input whatever their ``input_space``."""
        cache: dict[tuple, torch.Tensor] = {}
        inputs = {}
        for name, expert in self.experts.items():
            space = "normalized" if name in normalised else expert.input_space
            key = (expert.input_size, space)
            if key not in cache:
                x = pixel_values
                if space == "pixels_255":
                    # Undo the normalisation in the input dtype, as the original did.
                    mean, std = self.image_mean.to(x.dtype), self.image_std.to(x.dtype)
                    x = (x * std).add_(mean).mul_(255)  # (x * std + mean) * 255, one buffer
                elif space != "normalized":
                    raise ValueError(f"expert {name!r} declares an unknown input_space {expert.input_space!r}")
                if expert.input_size != self.config.image_size:
                    x = resize_bilinear(x, expert.input_size, x.dtype)
                cache[key] = x
            if name in (self.config.grayscale_experts or ()):
                if (*key, "grey") not in cache:
                    cache[(*key, "grey")] = self.grayscale(cache[key], expert.input_space)
                key = (*key, "grey")
            inputs[name] = cache[key]
        return inputs

    def expert_calls(self, pixel_values: torch.Tensor) -> dict[str, tuple[torch.Tensor, dict]]:
        """What the forward gives each expert: its input and keyword arguments."""
        folded = {name for name in self.experts if self.takes_pixel_affine(name, pixel_values.dtype)}
        inputs = self.expert_inputs(pixel_values, folded)
        return {name: (x, {"pixel_affine": self.pixel_affine()} if name in folded else {})
                for name, x in inputs.items()}

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, output_expert_features: bool = False,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                **kwargs) -> tuple | EagleVisionOutput:
        """Other keyword arguments (the LLM's, passed along by the composite model) are ignored."""
        self.check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(self.dtype)
        grid = self.config.grid_size
        wanted = {"hidden_states": output_hidden_states, "attentions": output_attentions}
        keys = [key for key, flag in wanted.items()
                if (flag if flag is not None else getattr(self.config, f"output_{key}", False))]
        keep_maps = self.fusion.uses_native_maps
        blocks, maps, recorded = {}, {}, {key: {} for key in keys}
        for name, (x, extra) in self.expert_calls(pixel_values).items():
            if keys:
                with _ExpertRecorder(self.experts[name], keys) as records:
                    feature_map = self.experts[name](x, **extra)
                for key in keys:
                    recorded[key][name] = tuple(records[key])
            else:
                feature_map = self.experts[name](x, **extra)
            if keep_maps:
                maps[name] = feature_map.to(pixel_values.device)
            if feature_map.shape[-2:] != (grid, grid):
                feature_map = resize_bilinear(feature_map, grid, pixel_values.dtype)
            # With a device_map, experts may sit on different devices: fuse on the input's device.
            blocks[name] = feature_map.flatten(2).transpose(1, 2).to(pixel_values.device, pixel_values.dtype)
        fused = self.fusion(blocks, maps if keep_maps else None)
        return EagleVisionOutput(last_hidden_state=fused, expert_features=blocks if output_expert_features else None,
                                 hidden_states=recorded.get("hidden_states"), attentions=recorded.get("attentions"))

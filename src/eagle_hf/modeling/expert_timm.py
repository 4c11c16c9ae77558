"""Any timm model as an expert, by name: ``timm.create_model(architecture, pretrained=False,
**model_args)`` builds it, the layers after feature level ``feature_index`` are pruned
(``prune_intermediate_layers``) and the expert returns that level's map through timm's uniform
``forward_intermediates`` API (CNNs and ViTs alike give [B, C, h, w]). The parameter names stay
timm's own, so a timm state dict loads into it (`EagleVisionTower.load_expert_weights`); nothing
is downloaded.
"""

import functools
import json

import torch
from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, PreTrainedModel

from .registry import VisionExpertMixin, register_expert


def _create(architecture: str, model_args: dict, feature_index: int):
    import timm

    model = timm.create_model(architecture, pretrained=False, num_classes=0, **model_args)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError("it has no forward_intermediates (timm's feature-map API)")
    levels = len(model.feature_info)
    if not -levels <= feature_index < levels:
        raise ValueError(f"feature_index {feature_index} is outside its {levels} feature levels")
    index = feature_index % levels
    model.prune_intermediate_layers(indices=[index], prune_norm=True, prune_head=True)
    return model, index, model.feature_info[index]["num_chs"]


@functools.lru_cache(maxsize=64)
def _feature_channels(architecture: str, model_args_json: str, feature_index: int) -> int:
    # Built once on the meta device (no memory, no weights) to read timm's feature_info.
    with torch.device("meta"):
        return _create(architecture, json.loads(model_args_json), feature_index)[2]


@strict
class EagleTimmExpertConfig(PreTrainedConfig):
    """``architecture``: a timm model name; ``model_args``: kwargs of ``timm.create_model`` (sizes,
    ``img_size``, ...); ``feature_index``: which of timm's feature levels (``out_indices``) to use;
    ``input_size``: side of the image fed to it."""

    model_type = "eagle_vl_timm"

    architecture: str = "convnext_atto"
    model_args: dict | None = None
    feature_index: int = -1
    input_size: int = 224

    def validate_architecture(self):
        import timm

        if self.architecture not in timm.list_models():
            raise ValueError(f"architecture={self.architecture!r} is not a timm model name "
                             "(see timm.list_models())")
        try:
            self.out_channels  # noqa: B018  (builds on the meta device)
        except Exception as err:
            raise ValueError(
                f"timm model {self.architecture!r} cannot return a feature map at feature_index="
                f"{self.feature_index}: {err}; choose another architecture or feature_index") from None

    @property
    def out_channels(self) -> int:
        return _feature_channels(self.architecture, json.dumps(self.model_args or {}, sort_keys=True),
                                 self.feature_index)


class EagleTimmExpert(VisionExpertMixin, PreTrainedModel):
    config: EagleTimmExpertConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # timm modules have no attention-implementation switch; any the composite asks for is fine.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: EagleTimmExpertConfig):
        super().__init__(config)
        self.model, self._index, _ = _create(config.architecture, dict(config.model_args or {}),
                                             config.feature_index)
        self.post_init()

    def _init_weights(self, module):
        # timm initialises its own modules in create_model; transformers' generic init would
        # overwrite that with another scheme.
        pass

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        param = next(self.model.parameters())
        return self.model.forward_intermediates(pixel_values.to(param.dtype), indices=[self._index],
                                                intermediates_only=True)[-1]

    def load_tower_weights(self, source) -> None:
        """A timm state dict (of the full model, as timm saves it) or a path to one
        (``.safetensors`` or a torch file); the pruned layers' and the head's weights are ignored."""
        if not isinstance(source, dict):
            source = str(source)
            if source.endswith(".safetensors"):
                from safetensors.torch import load_file

                source = load_file(source)
            else:
                source = torch.load(source, map_location="cpu", weights_only=True)
        own = self.model.state_dict()
        missing = [k for k in own if k not in source]
        if missing:
            raise ValueError(f"the timm state dict lacks {len(missing)} weights of {self.config.architecture}, "
                             f"e.g. {missing[:3]}")
        self.model.load_state_dict({k: source[k] for k in own}, strict=True)


register_expert("timm", EagleTimmExpertConfig, "any timm model by name (forward_intermediates)",
                tiny=dict(architecture="convnext_atto",
                          model_args=dict(dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], conv_mlp=False),
                          feature_index=2, input_size=64),
                full_size=dict(architecture="convnext_xxlarge", feature_index=-1, input_size=1024))(EagleTimmExpert)

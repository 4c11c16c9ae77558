"""ConvNeXt expert (EAGLE's ``convnext-1024``: CLIP ConvNeXt-XXLarge), built from timm's modules."""


import torch
from huggingface_hub.dataclasses import strict
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

from .registry import VisionExpertMixin, register_expert


@strict
class EagleConvNextExpertConfig(PreTrainedConfig):
    """timm ConvNeXt architecture; features are the raw output of stage ``feature_stage``."""

    model_type = "eagle_vl_convnext"
    base_config_key = "convnext_config"

    depths: list[int] | tuple[int, ...] = (3, 3, 9, 3)
    dims: list[int] | tuple[int, ...] = (96, 192, 384, 768)
    kernel_size: int = 7
    patch_size: int = 4
    ls_init_value: float = 1e-6
    norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    input_size: int = 1024
    feature_stage: int = -1
    initializer_range: float = 0.02

    def validate_stages(self):
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {list(self.depths)} and dims {list(self.dims)} differ in length")
        if not -len(self.dims) <= self.feature_stage < len(self.dims):
            raise ValueError(f"feature_stage {self.feature_stage} is outside the {len(self.dims)} stages")

    @property
    def out_channels(self) -> int:
        return self.dims[self.feature_stage]

    @property
    def num_stages_used(self) -> int:
        return self.feature_stage % len(self.dims) + 1


# CLIP ConvNeXt-XXLarge.
FULL_SIZE = dict(depths=[3, 4, 30, 3], dims=[384, 768, 1536, 3072], norm_eps=1e-5, input_size=1024)
TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], input_size=64, patch_size=4)


@register_expert("convnext", EagleConvNextExpertConfig, "ConvNeXt (timm modules)", tiny=TINY, full_size=FULL_SIZE)
class EagleConvNextExpert(VisionExpertMixin, PreTrainedModel):
    config: EagleConvNextExpertConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "convnext"
    supports_gradient_checkpointing = True
    # No attention layers: whatever attention implementation the composite asks for is fine here
    # (without these flags an explicit attn_implementation="sdpa" fails the whole model).
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = ["ConvNeXtBlock"]
    # output_hidden_states records the stem output and each stage's, as transformers' ConvNext does.
    _can_record_outputs = {"hidden_states": ConvNeXtStage}

    def __init__(self, config: EagleConvNextExpertConfig):
        super().__init__(config)
        # Borrow stem and stages from timm; the classifier head is never used by EAGLE.
        timm_model = ConvNeXt(
            depths=tuple(config.depths), dims=tuple(config.dims), kernel_sizes=config.kernel_size,
            patch_size=config.patch_size, ls_init_value=config.ls_init_value, norm_eps=config.norm_eps,
            act_layer=config.hidden_act, num_classes=0,
        )
        self.stem = timm_model.stem
        self.stages = timm_model.stages[: config.num_stages_used]
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ConvNeXtBlock) and module.gamma is not None:
            init.constant_(module.gamma, self.config.ls_init_value)

    # timm stages checkpoint their own blocks through `grad_checkpointing`; exposing it as
    # `gradient_checkpointing` lets transformers' generic toggle reach them.
    @property
    def gradient_checkpointing(self) -> bool:
        return all(stage.grad_checkpointing for stage in self.stages)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        x = self.stem(pixel_values.to(self.stem[0].weight.dtype))
        return self.stages(x)

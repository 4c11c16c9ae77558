from .configuration_eagle import EagleVisionConfig, EagleVLConfig
from .modeling_eagle import EagleMultiModalProjector, EaglePreTrainedModel, EagleVLForConditionalGeneration, EagleVLModel
from .modeling_mixture import EagleVisionOutput, EagleVisionTower
from .presets import preset_config, vision_preset
from .registry import get_expert, list_experts, register_expert, unregister_expert

__all__ = [
    "EagleVLConfig", "EagleVisionConfig", "EagleVLModel", "EagleVLForConditionalGeneration", "EaglePreTrainedModel",
    "EagleMultiModalProjector", "EagleVisionTower", "EagleVisionOutput", "preset_config", "vision_preset",
    "get_expert", "list_experts", "register_expert", "unregister_expert",
]

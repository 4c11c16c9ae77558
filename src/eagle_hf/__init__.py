"""eagle-hf: EAGLE (mixture-of-vision-encoder VLM) for Hugging Face transformers.

Importing this package registers the model with the transformers Auto classes:
``eagle_vl`` (native checkpoints) and ``eagle_llama`` (original NVlabs checkpoints).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .modeling import (
    EagleVisionConfig,
    EagleVisionTower,
    EagleVLConfig,
    EagleVLForConditionalGeneration,
    EagleVLModel,
    list_experts,
    preset_config,
    register_expert,
    vision_preset,
)
from .convert.legacy_eagle_llama import EagleLlamaConfig, EagleLlamaForConditionalGeneration

__version__ = "0.1.0"


def _register() -> None:
    AutoConfig.register(EagleVLConfig.model_type, EagleVLConfig, exist_ok=True)
    AutoConfig.register(EagleVisionConfig.model_type, EagleVisionConfig, exist_ok=True)
    AutoConfig.register(EagleLlamaConfig.model_type, EagleLlamaConfig, exist_ok=True)
    AutoModel.register(EagleVLConfig, EagleVLModel, exist_ok=True)
    AutoModel.register(EagleVisionConfig, EagleVisionTower, exist_ok=True)
    AutoModelForImageTextToText.register(EagleVLConfig, EagleVLForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(EagleLlamaConfig, EagleLlamaForConditionalGeneration, exist_ok=True)
    try:
        from .processing import EagleImageProcessor, EagleImageProcessorTorchvision, EagleProcessor
    except ImportError:  # processing is optional only while it is being built
        return
    backends = {"pil": EagleImageProcessor, "torchvision": EagleImageProcessorTorchvision}
    for cfg in (EagleVLConfig, EagleLlamaConfig):
        AutoProcessor.register(cfg, EagleProcessor, exist_ok=True)
        AutoImageProcessor.register(cfg, image_processor_classes=backends, exist_ok=True)
    # transformers picks the torchvision backend when none is asked for; EAGLE keeps PIL as the default
    # because PIL's uint8 bicubic resize is what reproduces the original preprocessing bit for bit.
    from transformers.models.auto import image_processing_auto

    pil_first = getattr(image_processing_auto, "DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS", None)
    if isinstance(pil_first, list) and EagleImageProcessor.__name__ not in pil_first:
        pil_first.append(EagleImageProcessor.__name__)


_register()

__all__ = [
    "EagleVLConfig", "EagleVisionConfig", "EagleVLModel", "EagleVLForConditionalGeneration", "EagleVisionTower",
    "EagleLlamaConfig", "EagleLlamaForConditionalGeneration", "preset_config", "vision_preset", "list_experts",
    "register_expert",
]

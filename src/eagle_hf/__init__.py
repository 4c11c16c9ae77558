"""eagle-hf: EAGLE (mixture-of-vision-encoder VLM) for Hugging Face transformers.

Importing this package registers the model with the transformers Auto classes:
``eagle_vl`` (native checkpoints) and ``eagle_llama`` (original NVlabs checkpoints). Nothing
heavy is imported here: the public names below and the Auto entries resolve on first use
(`eagle_hf._lazy`), so ``import eagle_hf`` and ``eagle-hf --help`` stay fast.
"""

import importlib

from ._lazy import after_import, lazy_content

__version__ = "0.1.0"

# public name -> defining module
_EXPORTS = {
    **dict.fromkeys(["EagleVLConfig", "EagleVisionConfig"], "eagle_hf.modeling.configuration_eagle"),
    **dict.fromkeys(["EagleVLModel", "EagleVLForConditionalGeneration"], "eagle_hf.modeling.modeling_eagle"),
    "EagleVisionTower": "eagle_hf.modeling.modeling_mixture",
    **dict.fromkeys(["preset_config", "vision_preset"], "eagle_hf.modeling.presets"),
    **dict.fromkeys(["list_experts", "register_expert"], "eagle_hf.modeling.registry"),
    **dict.fromkeys(["EagleLlamaConfig", "EagleLlamaForConditionalGeneration"], "eagle_hf.convert.legacy_eagle_llama"),
}
__all__ = list(_EXPORTS)

_CONFIG = "eagle_hf.modeling.configuration_eagle"
_LEGACY = "eagle_hf.convert.legacy_eagle_llama"
_MODEL = "eagle_hf.modeling.modeling_eagle"
_PROCESSOR = "eagle_hf.processing.processing_eagle:EagleProcessor"
_IMAGE_PROCESSORS = "eagle_hf.processing.image_processing_eagle"
_IMAGE_PROCESSOR = {"pil": f"{_IMAGE_PROCESSORS}:EagleImageProcessor",
                    "torchvision": f"{_IMAGE_PROCESSORS}:EagleImageProcessorTorchvision"}
_CONFIGS = {"eagle_vl": f"{_CONFIG}:EagleVLConfig", "eagle_vl_vision": f"{_CONFIG}:EagleVisionConfig",
            "eagle_llama": f"{_LEGACY}:EagleLlamaConfig"}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eagle_hf' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})


def _register() -> None:
    # Each Auto table is filled when transformers imports its module (at once if it already
    # has), so `import eagle_hf` imports neither transformers nor torch.
    def configs(module):
        content = lazy_content(module.CONFIG_MAPPING)
        for model_type, path in _CONFIGS.items():
            content.add(f":{model_type}", path)

    def models(module):
        base = lazy_content(module.MODEL_MAPPING)
        base.add(_CONFIGS["eagle_vl"], f"{_MODEL}:EagleVLModel")
        base.add(_CONFIGS["eagle_vl_vision"], "eagle_hf.modeling.modeling_mixture:EagleVisionTower")
        head = lazy_content(module.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING)
        head.add(_CONFIGS["eagle_vl"], f"{_MODEL}:EagleVLForConditionalGeneration")
        head.add(_CONFIGS["eagle_llama"], f"{_LEGACY}:EagleLlamaForConditionalGeneration")
        # Like transformers' own Gemma-3 / Mistral-3: tools that load "a causal LM" by path (TRL's
        # create_model_from_path falls back to AutoModelForCausalLM) get the full model with its head.
        causal = lazy_content(module.MODEL_FOR_CAUSAL_LM_MAPPING)
        causal.add(_CONFIGS["eagle_vl"], f"{_MODEL}:EagleVLForConditionalGeneration")
        causal.add(_CONFIGS["eagle_llama"], f"{_LEGACY}:EagleLlamaForConditionalGeneration")

    def processors(module):
        content = lazy_content(module.PROCESSOR_MAPPING)
        for model_type in ("eagle_vl", "eagle_llama"):
            content.add(_CONFIGS[model_type], _PROCESSOR)

    def image_processors(module):
        content = lazy_content(module.IMAGE_PROCESSOR_MAPPING)
        for model_type in ("eagle_vl", "eagle_llama"):
            content.add(_CONFIGS[model_type], _IMAGE_PROCESSOR)
        # transformers picks the torchvision backend when none is asked for; EAGLE keeps PIL as the
        # default because PIL's uint8 bicubic resize reproduces the original preprocessing bit for bit.
        pil_first = getattr(module, "DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS", None)
        if isinstance(pil_first, list) and "EagleImageProcessor" not in pil_first:
            pil_first.append("EagleImageProcessor")

    auto = "transformers.models.auto."
    after_import(auto + "configuration_auto", configs)
    after_import(auto + "modeling_auto", models)
    after_import(auto + "processing_auto", processors)
    after_import(auto + "image_processing_auto", image_processors)


_register()

"""The paper's per-expert pre-alignment (EAGLE §3.4): each vision expert, with a projector of its
own, is aligned to the *frozen* LLM on its own; the aligned experts are then combined in the
mixture, whose joint projector the next stage (``pretrain``) trains.

`single_expert_model` builds the one-expert EAGLE model around the mixture's own modules (the
expert, the LLM and the LM head are shared objects, not copies), so training it trains the
mixture's expert in place; only its projector is new, and is dropped afterwards.
"""

import copy

import torch

from ..modeling.configuration_eagle import EagleVisionConfig, EagleVLConfig
from ..modeling.modeling_eagle import EagleMultiModalProjector, EagleVLForConditionalGeneration
from ..modeling.registry import get_expert


def single_expert_config(config: EagleVLConfig, name: str) -> EagleVLConfig:
    vision = config.vision_config
    if name not in vision.expert_order:
        raise ValueError(f"expert {name!r} is not in this model's expert_order {vision.expert_order}")
    one = EagleVisionConfig(expert_order=[name], image_size=vision.image_size, grid_size=vision.grid_size,
                            image_mean=list(vision.image_mean), image_std=list(vision.image_std),
                            **{get_expert(name).slot: copy.deepcopy(vision.expert_config(name))})
    return EagleVLConfig(vision_config=one, text_config=copy.deepcopy(config.text_config),
                         image_token_id=config.image_token_id, projector_type=config.projector_type,
                         projector_depth=config.projector_depth, projector_hidden_act=config.projector_hidden_act,
                         multimodal_projector_bias=config.multimodal_projector_bias,
                         model_max_length=config.model_max_length, tie_word_embeddings=config.tie_word_embeddings)


def single_expert_model(model: EagleVLForConditionalGeneration, name: str, seed: int = 0):
    """A one-expert model sharing ``model``'s expert ``name``, LLM and LM head, with a fresh projector."""
    config = single_expert_config(model.config, name)
    with torch.device("meta"):  # nothing of the LLM or the expert is allocated twice
        sub = EagleVLForConditionalGeneration(config)
    tower = sub.model.vision_tower
    mixture = model.model.vision_tower
    setattr(tower, name, getattr(mixture, name))
    tower.image_mean, tower.image_std = mixture.image_mean, mixture.image_std
    sub.model.language_model = model.model.language_model
    sub.lm_head = model.lm_head
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    torch.manual_seed(seed)
    projector = EagleMultiModalProjector(config).to(device=device, dtype=dtype)
    for module in projector.modules():
        sub._init_weights(module)
    sub.model.multi_modal_projector = projector
    for param_name, param in sub.named_parameters():
        if param.is_meta:
            raise RuntimeError(f"single_expert_model left {param_name} unallocated")
    return sub

"""EAGLE models in the transformers LLaVA contract:
`get_image_features` -> placeholder mask -> `masked_scatter` -> language model."""


import importlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, is_torchdynamo_compiling, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_eagle import EagleVLConfig
from .modeling_mixture import EagleVisionOutput, EagleVisionTower
from .registry import list_experts
from .safetensors_header import CheckpointError, check_safetensors_files
from .validation import (
    check_attention_mask_shape,
    check_generation_length,
    check_image_token_spans,
    check_labels,
    check_mismatched_shapes,
    check_projector_layout,
    check_text_inputs,
    check_unlisted_experts,
    explain_image_token_mismatch,
)

# The label value transformers' causal-LM loss skips, read from the loss itself (this file cannot
# import eagle_hf.processing, whose IGNORE_INDEX the processor and the collator write; a test
# checks that the two agree).
IGNORE_INDEX = inspect.signature(ForCausalLMLoss).parameters["ignore_index"].default

logger = logging.get_logger(__name__)


@dataclass
class EagleImageFeaturesOutput(BaseModelOutputWithPooling):
    """``last_hidden_state``: fused expert features before the projector [B, N, C];
    ``pooler_output``: a list with one projected [N, H] tensor per image;
    ``expert_features``: per-expert blocks of the fused features when requested."""

    expert_features: dict[str, torch.Tensor] | None = None


@dataclass
class EagleModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    pass


@dataclass
class EagleCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    pass


class EagleMultiModalProjector(nn.Module):
    """``linear_1 -> act -> linear_2 -> ... -> linear_N`` (N = projector_depth), a single Linear, or identity."""

    def __init__(self, config: EagleVLConfig):
        super().__init__()
        in_dim, out_dim = config.vision_config.hidden_size, config.text_config.hidden_size
        depth = self.depth = config.projector_layers
        for i in range(depth):
            self.add_module(f"linear_{i + 1}", nn.Linear(in_dim if i == 0 else out_dim, out_dim,
                                                          bias=config.multimodal_projector_bias))
        self.act = ACT2FN[config.projector_hidden_act] if depth > 1 else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            if i:
                features = self.act(features)
            features = getattr(self, f"linear_{i + 1}")(features)
        return features


class EaglePreTrainedModel(PreTrainedModel):
    config: EagleVLConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, written into a temp folder and published atomically:
        a process killed while saving leaves the previous folder or the complete new one
        (`eagle_hf.atomic`). Files of the folder that the save does not write are kept."""
        # Record the channel layout the projector's weights belong to; from_pretrained checks it.
        self.config.projector_expert_order = list(self.config.vision_config.expert_order)
        if not self.should_save_on_this_rank(kwargs.get("is_main_process", True)):
            # A rank that writes nothing must not publish (and so replace the folder with) its
            # empty temp folder.
            return super().save_pretrained(save_directory, *args, **kwargs)
        try:  # imported by name: a remote-code copy of this file (no eagle_hf installed) saves plainly
            atomic_folder = importlib.import_module("eagle_hf.atomic").atomic_folder
        except ImportError:
            return super().save_pretrained(save_directory, *args, **kwargs)
        with atomic_folder(save_directory) as tmp:
            return super().save_pretrained(tmp, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a checkpoint that lacks weights of the base model (an
        expert, the projector, the LLM) is an error: transformers would only warn and leave e.g. a whole
        expert randomly initialised. A missing head (`lm_head`, as when a saved `EagleVLModel` is loaded
        into `EagleVLForConditionalGeneration`) is initialised and reported as transformers does.

        With ``output_loading_info=True`` nothing is refused: the caller asked to inspect what was
        loaded, and gets ``(model, info)`` exactly as from transformers (a warning names what is
        missing)."""
        want_info = kwargs.pop("output_loading_info", False)
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        user_ignores_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            # Mismatched shapes are collected (not raised) so that the error can name key and shapes.
            model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True,
                                                  **kwargs)
        except Exception as err:
            # safetensors' own error for a file cut short does not name it.
            try:
                check_safetensors_files(source, kwargs.get("subfolder"))
            except CheckpointError as broken:
                raise broken from err
            raise
        order = model.config.vision_config.expert_order
        check_mismatched_shapes(info, source, order, list_experts(), user_ignores_sizes)
        # Buffers an expert recomputes from its config are left out by transformers already: each expert
        # declares them in its `_keys_to_ignore_on_load_missing`, which post_init collects from children.
        missing = sorted(info.get("missing_keys", ()))
        refused = [k for k in missing if cls._is_base_model_key(model, k)]
        if refused and not want_info and not user_ignores_sizes:
            shown = ", ".join(refused[:12]) + (f" ... ({len(refused)} in all)" if len(refused) > 12 else "")
            raise ValueError(
                f"{source} does not hold all weights of this EAGLE model (is it another expert mix or LLM?): "
                f"{_describe_missing(refused)} would be randomly initialised; missing: {shown}. "
                "Pass output_loading_info=True to load anyway and inspect the loading info."
            )
        if refused:
            logger.warning(f"{source}: {_describe_missing(refused)} randomly initialised (weights missing)")
        if not want_info:
            check_unlisted_experts(info, source, order, list_experts())
        check_projector_layout(model.config)
        return (model, info) if want_info else model

    @classmethod
    def _is_base_model_key(cls, model, key: str) -> bool:
        # Head keys (lm_head) sit outside the base model's prefix; base-model classes have no head.
        prefix = model.base_model_prefix
        return not hasattr(model, prefix) or key.startswith(f"{prefix}.")


def _describe_missing(keys: list[str]) -> str:
    """'expert eva, multi_modal_projector' for missing weight names (with or without the `model.` prefix)."""
    parts = []
    for key in keys:
        key = key.removeprefix("model.")
        head = key.split(".")
        part = f"expert {head[1]}" if head[0] == "vision_tower" and len(head) > 1 else head[0]
        if part not in parts:
            parts.append(part)
    return ", ".join(parts)


class EagleVLModel(EaglePreTrainedModel):
    """Vision experts + projector + language model, without the LM head."""

    def __init__(self, config: EagleVLConfig):
        super().__init__(config)
        self.vision_tower = EagleVisionTower(config.vision_config)
        self.multi_modal_projector = EagleMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, output_expert_features: bool = False,
                           **kwargs: Unpack[TransformersKwargs]) -> tuple | EagleImageFeaturesOutput:
        """Run the experts, fuse and project. ``pooler_output``: one [N, H] tensor per image.
        ``output_hidden_states`` / ``output_attentions`` return each expert's, keyed by expert name
        (see `EagleVisionOutput`)."""
        vision: EagleVisionOutput = self.vision_tower(
            pixel_values, output_expert_features=output_expert_features, return_dict=True, **kwargs
        )
        fused = vision.last_hidden_state
        projected = self.multi_modal_projector(fused.to(self.multi_modal_projector_dtype))
        return EagleImageFeaturesOutput(
            last_hidden_state=fused, pooler_output=list(projected), hidden_states=vision.hidden_states,
            attentions=vision.attentions, expert_features=vision.expert_features,
        )

    @property
    def multi_modal_projector_dtype(self) -> torch.dtype:
        params = list(self.multi_modal_projector.parameters())
        return params[0].dtype if params else self.language_model.dtype

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor,
                             image_features: torch.Tensor) -> torch.Tensor:
        image_token_id = self.config.image_token_id
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        else:
            mask = input_ids == image_token_id
        n_tokens = int(mask.sum())
        per_image = self.config.image_seq_length
        if n_tokens != image_features.shape[0]:
            why = explain_image_token_mismatch(input_ids, n_tokens, image_features.shape[0], per_image, image_token_id,
                                               self.config.text_config.pad_token_id)
            raise ValueError(
                f"the text holds {n_tokens} image tokens ({n_tokens / per_image:g} images of {per_image} tokens) but "
                f"{image_features.shape[0] // per_image} images were given ({image_features.shape[0]} features); "
                f"each image needs exactly one image placeholder expanded by the processor{why}"
            )
        check_image_token_spans(mask, per_image)
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    def embed_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        # The image token may lie outside the LLM vocabulary (converted original checkpoints put it
        # at vocab_size): look those positions up as id 0; they are overwritten by image features
        # (or, without images, stand for the placeholder as text).
        vocab = self.get_input_embeddings().num_embeddings
        if self.config.image_token_id >= vocab:
            input_ids = input_ids.masked_fill(input_ids == self.config.image_token_id, 0)
        return self.get_input_embeddings()(input_ids)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | EagleModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs and mm_encoder_outputs.get("image") is not None:
            raise ValueError("pass either pixel_values or precomputed mm_encoder_outputs, not both")
        # Input checks branch on data: eager only (under torch.compile they would break the graph).
        eager = not is_torchdynamo_compiling()
        prefill = eager and (cache is None or cache.get_seq_length() == 0)
        if eager:
            check_text_inputs(input_ids, inputs_embeds, attention_mask, self.config.text_config.vocab_size,
                              self.config.image_token_id, prefill)
        if inputs_embeds is None:
            inputs_embeds = self.embed_text(input_ids)

        # The length check runs eagerly only (under torch.compile it would be data-dependent branching).
        # With position_ids a row may hold several sequences (vLLM's Transformers backend flattens all
        # requests of a step into one row; padding-free training packs them): the limit is then on the
        # positions, read only when the row is wider than the limit (a device sync).
        limit = self.config.max_sequence_length
        if (prefill and inputs_embeds.shape[1] > limit
                and (position_ids is None or int(position_ids.max()) >= limit)):
            n_image = int((input_ids == self.config.image_token_id).sum(-1).max()) if input_ids is not None else 0
            raise ValueError(
                f"the input is {inputs_embeds.shape[1]} tokens ({n_image} of them image tokens) but this model allows "
                f"{limit}; shorten the text or use fewer images"
            )

        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if mm_encoder_outputs.get("image") is None and pixel_values is not None:
            mm_encoder_outputs["image"] = self.get_image_features(pixel_values, return_dict=True, **kwargs)
        image_outputs = mm_encoder_outputs.get("image")
        if (image_outputs is not None and input_ids is not None and not is_torchdynamo_compiling()
                and cache is not None and cache.get_seq_length() > 0
                and not (input_ids == self.config.image_token_id).any()):
            # Continuing from a cache that already holds the prompt (generate(..., cache=...) with the
            # same inputs): the images belong to the cached placeholders, there is nothing to fill.
            image_outputs = None
        if image_outputs is not None:
            features = torch.cat(list(image_outputs.pooler_output), dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features)
        elif input_ids is not None and not is_torchdynamo_compiling() and (input_ids == self.config.image_token_id).any():
            # As in transformers' VLMs, placeholders without images are embedded as ordinary text: an
            # assistant (draft) model in assisted generation sees the prompt without its images.
            logger.warning_once(
                "the input holds image tokens but no images (pixel_values); they are embedded as text. "
                "Pass pixel_values (or mm_encoder_outputs) for the model to see the images."
            )

        outputs = self.language_model(
            attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, return_dict=True, **kwargs,
        )
        return EagleModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )


class EagleVLForConditionalGeneration(EaglePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: EagleVLConfig):
        super().__init__(config)
        self.model = EagleVLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.model.language_model

    @property
    def vision_tower(self) -> EagleVisionTower:
        return self.model.vision_tower

    def get_image_features(self, pixel_values: torch.Tensor,
                           **kwargs: Unpack[TransformersKwargs]) -> tuple | EagleImageFeaturesOutput:
        return self.model.get_image_features(pixel_values=pixel_values, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | EagleCausalLMOutputWithPast:
        check_labels(labels, input_ids if input_ids is not None else inputs_embeds)
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs, return_dict=True, **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=self.mask_labels(labels, input_ids, attention_mask),
                vocab_size=self.config.text_config.vocab_size, **kwargs,
            )
        return EagleCausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, image_outputs=outputs.image_outputs,
        )

    def _maybe_prepare_encoder_kwargs_for_generation(self, inputs_tensor, model_kwargs, model_input_name,
                                                     generation_config):
        # generate encodes the images here; a request that cannot succeed is refused before that.
        if model_input_name == "input_ids" and inputs_tensor is not None and inputs_tensor.ndim == 2:
            batch, length = inputs_tensor.shape
            mask = model_kwargs.get("attention_mask")
            # generate drops an all-ones mask and keeps only its length.
            mask_shape = tuple(mask.shape) if mask is not None else (
                (batch, generation_config._mask_length) if getattr(generation_config, "_mask_length", None) else ())
            has_cache = model_kwargs.get("past_key_values") is not None or model_kwargs.get("cache") is not None
            check_attention_mask_shape(mask_shape, batch, length, exact=not has_cache)
            if generation_config.max_new_tokens is not None:
                prompt = max(length, mask_shape[1] if mask_shape else 0)
                check_generation_length(prompt, prompt + generation_config.max_new_tokens,
                                        generation_config.max_new_tokens, *self.config.position_limit)
        return super()._maybe_prepare_encoder_kwargs_for_generation(inputs_tensor, model_kwargs, model_input_name,
                                                                    generation_config)

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        limit, source = self.config.position_limit
        if has_default_max_length and generation_config.max_new_tokens is None:
            # transformers' own default (20 new tokens) stops at the positions instead of refusing.
            generation_config.max_length = min(generation_config.max_length, limit)
        check_generation_length(input_ids_length, generation_config.max_length, generation_config.max_new_tokens,
                                limit, source)

    def mask_labels(self, labels: torch.LongTensor, input_ids: torch.LongTensor | None,
                    attention_mask: torch.Tensor | None) -> torch.LongTensor:
        """Image and padding positions never carry loss, whatever the collator did."""
        labels = labels.masked_fill(labels == self.config.image_token_id, IGNORE_INDEX)
        if input_ids is not None:
            labels = labels.masked_fill(input_ids == self.config.image_token_id, IGNORE_INDEX)
        if attention_mask is not None and attention_mask.shape == labels.shape:
            labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return labels

"""EAGLE models in the transformers LLaVA contract:
`get_image_features` -> placeholder mask -> `masked_scatter` -> language model."""


import glob
import json
import os
import re
import struct
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep

from .configuration_eagle import EagleVLConfig
from .modeling_mixture import EagleVisionOutput, EagleVisionTower

IGNORE_INDEX = -100


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
        depth = {"mlp": config.projector_depth, "linear": 1, "identity": 0}[config.projector_type]
        self.depth = depth
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


def _broken_safetensors(folder, subfolder=None) -> str | None:
    """The first safetensors file of a local folder whose header or data is cut short (safetensors'
    own error does not name the file)."""
    if folder is None or not os.path.isdir(os.path.join(str(folder), subfolder or "")):
        return None
    for path in sorted(glob.glob(os.path.join(str(folder), subfolder or "", "*.safetensors"))):
        size = os.path.getsize(path)
        try:
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len)) if 8 + header_len <= size else None
        except (struct.error, ValueError):
            return path
        ends = [entry["data_offsets"][1] for name, entry in (header or {}).items() if name != "__metadata__"]
        if header is None or 8 + header_len + max(ends, default=0) > size:
            return path
    return None


class EaglePreTrainedModel(PreTrainedModel):
    config: EagleVLConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # Buffers that are recomputed from the config when a checkpoint lacks them.
    _derived_buffers = re.compile(r"\.rope_(win|glb)\.freqs_(cos|sin)$")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a checkpoint that lacks weights of this model is an
        error: transformers would only warn and leave e.g. a whole expert randomly initialised."""
        want_info = kwargs.pop("output_loading_info", False)
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except Exception as err:
            broken = _broken_safetensors(source, kwargs.get("subfolder"))
            if broken:
                raise ValueError(f"{broken} is truncated or corrupt; download or copy it again") from err
            raise
        missing = sorted(k for k in info.get("missing_keys", ()) if not cls._derived_buffers.search(k))
        if missing and not kwargs.get("ignore_mismatched_sizes"):
            shown = ", ".join(missing[:12]) + (f" ... ({len(missing)} in all)" if len(missing) > 12 else "")
            raise ValueError(
                f"{source} does not hold all weights of this EAGLE model (is it another expert mix or LLM?); "
                f"missing: {shown}"
            )
        return (model, info) if want_info else model


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

    def get_image_features(self, pixel_values: torch.Tensor, output_expert_features: bool = False,
                           return_dict: bool = True, **kwargs) -> EagleImageFeaturesOutput:
        vision: EagleVisionOutput = self.vision_tower(pixel_values, output_expert_features=output_expert_features)
        fused = vision.last_hidden_state
        projected = self.multi_modal_projector(fused.to(self.multi_modal_projector_dtype))
        return EagleImageFeaturesOutput(
            last_hidden_state=fused, pooler_output=list(projected), expert_features=vision.expert_features
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
            raise ValueError(
                f"the text holds {n_tokens} image tokens ({n_tokens / per_image:g} images of {per_image} tokens) but "
                f"{image_features.shape[0] // per_image} images were given ({image_features.shape[0]} features); "
                "each image needs exactly one image placeholder expanded by the processor"
            )
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    def embed_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        # The image token may lie outside the LLM vocabulary (converted original checkpoints put it
        # at vocab_size): look those positions up as id 0; they are overwritten by image features.
        vocab = self.get_input_embeddings().num_embeddings
        if self.config.image_token_id >= vocab:
            input_ids = input_ids.masked_fill(input_ids == self.config.image_token_id, 0)
        return self.get_input_embeddings()(input_ids)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> EagleModelOutputWithPast:
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs and mm_encoder_outputs.get("image") is not None:
            raise ValueError("pass either pixel_values or precomputed mm_encoder_outputs, not both")
        if inputs_embeds is None:
            inputs_embeds = self.embed_text(input_ids)

        prefill = cache is None or cache.get_seq_length() == 0
        if prefill and inputs_embeds.shape[1] > self.config.max_sequence_length:
            n_image = int((input_ids == self.config.image_token_id).sum(-1).max()) if input_ids is not None else 0
            raise ValueError(
                f"the input is {inputs_embeds.shape[1]} tokens ({n_image} of them image tokens) but this model allows "
                f"{self.config.max_sequence_length}; shorten the text or use fewer images"
            )

        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if mm_encoder_outputs.get("image") is None and pixel_values is not None:
            mm_encoder_outputs["image"] = self.get_image_features(pixel_values)
        image_outputs = mm_encoder_outputs.get("image")
        if image_outputs is not None:
            features = torch.cat(list(image_outputs.pooler_output), dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features)
        elif input_ids is not None and (input_ids == self.config.image_token_id).any():
            # Cached decoding steps never contain image tokens; a prompt that does needs its images.
            if prefill:
                n = int((input_ids == self.config.image_token_id).sum())
                raise ValueError(f"the text holds {n} image tokens but no images (pixel_values) were given")

        outputs = self.language_model(
            attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, **kwargs,
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

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> EagleImageFeaturesOutput:
        return self.model.get_image_features(pixel_values=pixel_values, **kwargs)

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
        **kwargs,
    ) -> EagleCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs, **kwargs,
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

    def mask_labels(self, labels: torch.LongTensor, input_ids: torch.LongTensor | None,
                    attention_mask: torch.Tensor | None) -> torch.LongTensor:
        """Image and padding positions never carry loss, whatever the collator did."""
        labels = labels.masked_fill(labels == self.config.image_token_id, IGNORE_INDEX)
        if input_ids is not None:
            labels = labels.masked_fill(input_ids == self.config.image_token_id, IGNORE_INDEX)
        if attention_mask is not None and attention_mask.shape == labels.shape:
            labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return labels

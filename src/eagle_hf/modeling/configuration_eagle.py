"""Configuration of eagle-hf models: the single source of truth for the expert mix.

Derived numbers (fused channels, tokens per image) are properties computed from the
sub-configs, never stored.
"""


from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .expert_clip import EagleClipExpertConfig
from .expert_convnext import EagleConvNextExpertConfig
from .expert_eva import EagleEvaExpertConfig
from .expert_pix2struct import EaglePix2StructExpertConfig
from .expert_sam import EagleSamExpertConfig
from .registry import get_expert, list_experts

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The released experts at full size (NVEagle checkpoints); `presets.py` builds mixes from these.
FULL_SIZE_EXPERTS = {
    # openai/clip-vit-large-patch14-336, run at 336 px as EAGLE's "clip-448" does.
    "clip": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14, image_size=336, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768),
    # CLIP ConvNeXt-XXLarge.
    "convnext": dict(depths=[3, 4, 30, 3], dims=[384, 768, 1536, 3072], norm_eps=1e-5, input_size=1024),
    # facebook/sam-vit-large image encoder.
    "sam": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_dim=4096, image_size=1024,
                patch_size=16, global_attn_indexes=[5, 11, 17, 23], window_size=14, output_channels=256,
                layer_norm_eps=1e-6),
    # google/pix2struct-large encoder.
    "pix2struct": dict(hidden_size=1536, num_hidden_layers=18, num_attention_heads=24, d_kv=64, d_ff=3968,
                       dense_act_fn="gelu_new", layer_norm_eps=1e-6, patch_embed_hidden_size=768, seq_len=4096,
                       input_size=1024, max_patches=2048),
    # EVA-02-L/16 from the COCO (Objects365) ViTDet detector.
    "eva": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=2730,
                input_size=1024, window_size=16, global_attn_indexes=[2, 5, 8, 11, 14, 17, 20, 23]),
}
RELEASED_X5_ORDER = ["clip", "convnext", "sam", "pix2struct", "eva"]


@strict
class EagleVisionConfig(PreTrainedConfig):
    """A mixture of vision experts that all see one square image of side ``image_size``.

    Each expert named in ``expert_order`` has its sub-config in the slot ``<name>_config``;
    its feature map is resampled to ``grid_size`` x ``grid_size`` and the maps are concatenated
    on channels in ``expert_order``. ``image_mean``/``image_std`` describe how the shared input
    was normalised (experts that need raw pixels undo it).
    """

    model_type = "eagle_vl_vision"
    base_config_key = "vision_config"

    sub_configs_defaults = {
        "clip_config": SubConfigSpec(EagleClipExpertConfig, optional=True),
        "convnext_config": SubConfigSpec(EagleConvNextExpertConfig, optional=True),
        "sam_config": SubConfigSpec(EagleSamExpertConfig, optional=True),
        "pix2struct_config": SubConfigSpec(EaglePix2StructExpertConfig, optional=True),
        "eva_config": SubConfigSpec(EagleEvaExpertConfig, optional=True),
    }

    clip_config: dict | PreTrainedConfig | None = None
    convnext_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
    pix2struct_config: dict | PreTrainedConfig | None = None
    eva_config: dict | PreTrainedConfig | None = None

    expert_order: list[str] | None = None
    image_size: int = 1024
    grid_size: int = 32
    image_mean: list[float] | tuple[float, ...] = tuple(OPENAI_CLIP_MEAN)
    image_std: list[float] | tuple[float, ...] = tuple(OPENAI_CLIP_STD)

    def __post_init__(self, **kwargs):
        given = [n for n in list_experts() if getattr(self, f"{n}_config", None) is not None]
        if self.expert_order is None and not given:
            # Like LlavaConfig() describing llava-1.5-7b, the bare config is the released X5 mix.
            self.expert_order = list(RELEASED_X5_ORDER)
            for name in self.expert_order:
                setattr(self, f"{name}_config", dict(FULL_SIZE_EXPERTS[name]))
        elif self.expert_order is None:
            self.expert_order = given
        self.expert_order = list(self.expert_order)
        super().__post_init__(**kwargs)

    def validate_experts(self):
        if not self.expert_order:
            raise ValueError("EagleVisionConfig needs at least one expert in expert_order")
        if len(set(self.expert_order)) != len(self.expert_order):
            raise ValueError(f"expert_order lists an expert twice: {self.expert_order}")
        for name in self.expert_order:
            get_expert(name)  # unknown names fail with the list of known ones
            if getattr(self, f"{name}_config", None) is None:
                raise ValueError(f"expert {name!r} is in expert_order but {name}_config is not set")
        if self.grid_size < 1 or self.image_size < 1:
            raise ValueError(f"grid_size ({self.grid_size}) and image_size ({self.image_size}) must be positive")

    def expert_config(self, name: str) -> PreTrainedConfig:
        return getattr(self, f"{name}_config")

    @property
    def expert_channels(self) -> dict[str, int]:
        return {name: self.expert_config(name).out_channels for name in self.expert_order}

    @property
    def hidden_size(self) -> int:
        """Channels of the fused map: the sum of the experts' channels."""
        return sum(self.expert_channels.values())

    @property
    def channel_offsets(self) -> dict[str, int]:
        offsets, start = {}, 0
        for name, channels in self.expert_channels.items():
            offsets[name] = start
            start += channels
        return offsets

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2


@strict
class EagleVLConfig(PreTrainedConfig):
    """EAGLE: a mixture of vision experts, an MLP projector and any causal LM.

    ``projector_type``: ``"mlp"`` (``projector_depth`` Linear layers with ``projector_hidden_act``
    between them; the releases' ``mlp2x_gelu`` is depth 2), ``"linear"`` or ``"identity"``.
    ``model_max_length``: sequence budget after image tokens are inserted (the original's
    ``tokenizer_model_max_length``); ``None`` means the LLM's ``max_position_embeddings``.
    """

    model_type = "eagle_vl"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(EagleVisionConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 32000
    projector_type: str = "mlp"
    projector_depth: int = 2
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    model_max_length: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    def validate_projector(self):
        if self.projector_type not in ("mlp", "linear", "identity"):
            raise ValueError(f"projector_type must be 'mlp', 'linear' or 'identity', got {self.projector_type!r}")
        if self.projector_type == "mlp" and self.projector_depth < 1:
            raise ValueError(f"projector_depth must be >= 1, got {self.projector_depth}")
        if self.projector_type == "identity" and self.vision_config.hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"an identity projector needs the fused vision channels ({self.vision_config.hidden_size}) to equal "
                f"the LLM hidden size ({self.text_config.hidden_size})"
            )

    @property
    def image_seq_length(self) -> int:
        """Tokens each image occupies in the text: the shared grid, whatever the image size."""
        return self.vision_config.num_image_tokens

    @property
    def max_sequence_length(self) -> int:
        """``model_max_length``, else the LLM's position budget: ``max_position_embeddings``, raised by
        a RoPE scaling ``factor`` (applied to ``original_max_position_embeddings`` where given)."""
        if self.model_max_length:
            return self.model_max_length
        limit = self.text_config.max_position_embeddings
        rope = getattr(self.text_config, "rope_parameters", None) or {}
        # One dict, or one per layer type (e.g. {"full_attention": {...}, "sliding_attention": {...}}).
        for params in [rope] if "rope_type" in rope else [v for v in rope.values() if isinstance(v, dict)]:
            if params.get("rope_type", "default") != "default" and params.get("factor"):
                base = params.get("original_max_position_embeddings") or self.text_config.max_position_embeddings
                limit = max(limit, int(base * params["factor"]))
        return limit

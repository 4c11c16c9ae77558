"""Configuration of eagle-hf models: the single source of truth for the expert mix.

Derived numbers (fused channels, tokens per image) are properties computed from the
sub-configs, never stored.
"""


from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# The built-in experts register themselves (and their config slots) on import. Adding an expert
# to the package is its `expert_<name>.py` plus one line here; one defined elsewhere calls
# `register_expert` itself. (One flat module per expert, imported as `from .x import`, because
# that is what transformers' remote-code export copies next to the weights.)
from .expert_clip import EagleClipExpert  # noqa: F401
from .expert_convnext import EagleConvNextExpert  # noqa: F401
from .expert_eva import EagleEvaExpert  # noqa: F401
from .expert_hf import EagleHFExpert  # noqa: F401  (siglip, siglip2, dinov2, convnextv2)
from .expert_pix2struct import EaglePix2StructExpert  # noqa: F401
from .expert_sam import EagleSamExpert  # noqa: F401
from .expert_timm import EagleTimmExpert  # noqa: F401
from .fusion import FUSIONS, get_fusion
from .registry import EXPERT_SLOTS, get_expert, is_registered, list_experts
from .validation import check_positive_sizes, rope_position_limit

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The released X5 mix, in its concatenation order (what a bare EagleVisionConfig() describes).
RELEASED_X5_ORDER = ["clip", "convnext", "sam", "pix2struct", "eva"]
_SLOT_SUFFIX = "_config"


@strict
class EagleVisionConfig(PreTrainedConfig):
    """A mixture of vision experts that all see one square image of side ``image_size``.

    Each expert named in ``expert_order`` has its sub-config in the slot ``<name>_config``; there
    is one slot per *registered* expert (`eagle_hf.register_expert`), ``None`` when unused. Its
    feature map is resampled to ``grid_size`` x ``grid_size`` and the maps are concatenated
    on channels in ``expert_order``. ``image_mean``/``image_std`` describe how the shared input
    was normalised (experts that need raw pixels undo it).

    ``fusion`` picks how the experts' maps become image tokens (`eagle_hf.modeling.fusion`):
    ``"channel_concat"`` (the releases'), ``"sequence_append"``, ``"injection"`` (LLaVA-HR),
    ``"patch_mining"`` (Mini-Gemini) or ``"deformable"``; the ``fusion_*`` fields are their sizes
    (``fusion_hidden_size``: sequence_append's common width, default the widest expert;
    ``fusion_num_heads``: patch_mining/deformable heads; ``fusion_mining_factor``: high-resolution
    patches per grid-cell side; ``fusion_num_points``: deformable sampling points per head and map).

    ``grayscale_experts`` names experts that see the image without its colour: a grey image (three
    equal channels, in the expert's own input space). In evaluation the grey is the luminance
    (ITU-R BT.601 weights); in training each image gets random convex channel weights instead, so
    brightness does not identify a colour either. Such an expert can only encode form, so a readout
    cannot learn "this colour never has that shape" from its features (held-out colour-shape pairs).
    """

    model_type = "eagle_vl_vision"
    base_config_key = "vision_config"

    expert_order: list[str] | None = None
    image_size: int = 1024
    grid_size: int = 32
    image_mean: list[float] | tuple[float, ...] = tuple(OPENAI_CLIP_MEAN)
    image_std: list[float] | tuple[float, ...] = tuple(OPENAI_CLIP_STD)
    fusion: str = "channel_concat"
    fusion_hidden_size: int | None = None
    fusion_num_heads: int = 1
    fusion_mining_factor: int = 2
    fusion_num_points: int = 4
    grayscale_experts: list[str] | None = None

    def __post_init__(self, **kwargs):
        # The expert slots are not dataclass fields (their set grows with the registry), so they
        # arrive in kwargs; each registered expert's slot exists, None when unused.
        for slot in EXPERT_SLOTS:
            if slot not in self.__dict__:
                setattr(self, slot, kwargs.pop(slot, None))
        given = [n for n in list_experts() if self.expert_config(n) is not None]
        unknown = [k[: -len(_SLOT_SUFFIX)] for k, v in kwargs.items()
                   if k.endswith(_SLOT_SUFFIX) and isinstance(v, (dict, PreTrainedConfig))]
        for name in unknown + [n for n in (self.expert_order or []) if not is_registered(n)]:
            get_expert(name)  # an unregistered expert fails here, saying how to register it
        if self.expert_order is None and not given:
            # Like LlavaConfig() describing llava-1.5-7b, the bare config is the released X5 mix.
            self.expert_order = list(RELEASED_X5_ORDER)
            for name in self.expert_order:
                setattr(self, get_expert(name).slot, get_expert(name).preset("full_size"))
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
            spec = get_expert(name)  # unknown names fail with the list of known ones
            if self.expert_config(name) is None:
                raise ValueError(f"expert {name!r} is in expert_order but {spec.slot} is not set")
        unknown = [n for n in self.grayscale_experts or () if n not in self.expert_order]
        if unknown:
            raise ValueError(f"grayscale_experts names {unknown}, which expert_order ({self.expert_order}) does not "
                             "hold; list only experts of the mixture")
        if self.grayscale_experts and len(self.image_mean) != 3:
            raise ValueError(f"grayscale_experts needs an RGB input (image_mean has {len(self.image_mean)} channels)")
        if self.grid_size < 1 or self.image_size < 1:
            raise ValueError(f"grid_size ({self.grid_size}) and image_size ({self.image_size}) must be positive")

    def validate_fusion(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r} is not one of {', '.join(FUSIONS)}; set fusion to one of them")
        get_fusion(self.fusion).check(self)

    def to_dict(self):
        output = super().to_dict()
        # Slots of experts registered in this process but unused stay out of config.json, so a
        # folder saved next to a third-party registration loads where it is not registered.
        for slot in EXPERT_SLOTS:
            if output.get(slot, 0) is None and slot not in _BUILTIN_SLOTS:
                del output[slot]
        return output

    def validate_expert_sizes(self):
        for name in self.expert_order or ():
            if self.expert_config(name) is not None:
                check_positive_sizes(self.expert_config(name), f"vision_config.{name}{_SLOT_SUFFIX}")

    def expert_config(self, name: str) -> PreTrainedConfig | None:
        return getattr(self, f"{name}{_SLOT_SUFFIX}", None)

    @property
    def expert_channels(self) -> dict[str, int]:
        return {name: self.expert_config(name).out_channels for name in self.expert_order}

    @property
    def hidden_size(self) -> int:
        """Width of the image tokens the fusion hands the projector (for channel_concat: the sum of
        the experts' channels)."""
        return get_fusion(self.fusion).output_width(self)

    @property
    def channel_offsets(self) -> dict[str, int]:
        offsets, start = {}, 0
        for name, channels in self.expert_channels.items():
            offsets[name] = start
            start += channels
        return offsets

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image, as the fusion declares them (grid_size**2 for channel_concat)."""
        return get_fusion(self.fusion).output_tokens(self)


# Live: registering an expert later adds its slot (see registry.EXPERT_SLOTS).
EagleVisionConfig.sub_configs_defaults = EXPERT_SLOTS
_BUILTIN_SLOTS = frozenset(EXPERT_SLOTS)


# projector_type -> its number of Linear layers (an MLP's is projector_depth).
PROJECTOR_TYPES = {"mlp": None, "linear": 1, "identity": 0}


@strict
class EagleVLConfig(PreTrainedConfig):
    """EAGLE: a mixture of vision experts, an MLP projector and any causal LM.

    ``projector_type``: ``"mlp"`` (``projector_depth`` Linear layers with ``projector_hidden_act``
    between them; the releases' ``mlp2x_gelu`` is depth 2), ``"linear"`` or ``"identity"``.
    ``model_max_length``: sequence budget after image tokens are inserted (the original's
    ``tokenizer_model_max_length``); ``None`` means the LLM's positions (``max_position_embeddings``,
    stretched by RoPE scaling when configured).
    ``projector_expert_order``: the expert order (fused channel layout) the projector was trained on,
    written by ``save_pretrained`` and checked by ``from_pretrained``.
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
    projector_expert_order: list[str] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        # Only remote-code exports carry an auto_map, but tools read `config.auto_map` unguarded (TRL 1.16,
        # trl/trainer/utils.py:1359 in create_model_from_path): an empty one, never saved (see to_dict).
        if getattr(self, "auto_map", None) is None:
            self.auto_map = {}

    def to_dict(self):
        output = super().to_dict()
        if not output.get("auto_map"):
            output.pop("auto_map", None)
        return output

    def validate_text_sizes(self):
        check_positive_sizes(self.text_config, "text_config")

    def validate_projector(self):
        if self.projector_type not in PROJECTOR_TYPES:
            *others, last = map(repr, PROJECTOR_TYPES)
            raise ValueError(f"projector_type must be {', '.join(others)} or {last}, got {self.projector_type!r}")
        if self.projector_type == "mlp" and self.projector_depth < 1:
            raise ValueError(f"projector_depth must be >= 1, got {self.projector_depth}")
        if self.projector_type == "identity" and self.vision_config.hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"an identity projector needs the fused vision channels ({self.vision_config.hidden_size}) to equal "
                f"the LLM hidden size ({self.text_config.hidden_size})"
            )

    @property
    def projector_layers(self) -> int:
        """Linear layers in the projector (``linear_1 .. linear_N``): ``projector_depth`` for an MLP,
        1 for ``linear``, 0 for ``identity``. The model, the original-key renaming and the model card
        all read it here."""
        return self.projector_depth if self.projector_type == "mlp" else PROJECTOR_TYPES[self.projector_type]

    @property
    def image_seq_length(self) -> int:
        """Tokens each image occupies in the text: the shared grid, whatever the image size."""
        return self.vision_config.num_image_tokens

    @property
    def position_limit(self) -> tuple[int, str]:
        """Tokens a sequence may hold (prompt + generated) and where that number comes from."""
        if self.model_max_length:
            return self.model_max_length, f"model_max_length={self.model_max_length}"
        return rope_position_limit(self.text_config)

    @property
    def max_sequence_length(self) -> int:
        """``model_max_length``, else the LLM's position budget (see ``position_limit``)."""
        return self.position_limit[0]

"""Registry of vision experts: the single source of truth for which experts exist.

An expert is one module (``expert_<name>.py``) holding its config class, its model class, its
tiny and full-size presets and what training needs to know of it, registered under a name with
`register_expert`. The name is at once the key of its sub-config slot in `EagleVisionConfig`
(``<name>_config``), the attribute of the mixture that holds it, and therefore the prefix of its
weights (``model.vision_tower.<name>.``). Registering an expert creates its config slot, so an
expert defined outside this package works in configs, ``save_pretrained`` and
``from_pretrained`` like the built-in ones.
"""

import copy
import keyword
from dataclasses import dataclass, field

from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    config_class: type
    model_class: type
    description: str = ""
    tiny: dict | None = field(default=None, repr=False)
    full_size: dict | None = field(default=None, repr=False)

    @property
    def slot(self) -> str:
        """The attribute of `EagleVisionConfig` that holds this expert's sub-config."""
        return f"{self.name}_config"

    def preset(self, size: str) -> dict:
        """A copy of the ``"tiny"`` or ``"full_size"`` config kwargs this expert ships with."""
        if size not in ("tiny", "full_size"):
            raise ValueError(f"preset size must be 'tiny' or 'full_size', got {size!r}")
        table = self.tiny if size == "tiny" else self.full_size
        if table is None:
            raise ValueError(f"vision expert {self.name!r} has no {size} preset; pass {self.slot}=... explicitly "
                             f"or register it with register_expert({self.name!r}, ..., {size}=dict(...))")
        return copy.deepcopy(table)


_EXPERTS: dict[str, ExpertSpec] = {}
# Attributes of the mixture module that an expert (a child named after it) must not shadow.
_RESERVED_NAMES = frozenset({"fusion", "experts", "config", "image_mean", "image_std"})
# The sub-config slots, kept in step with _EXPERTS. `EagleVisionConfig.sub_configs_defaults` *is*
# this dict (not a copy), so transformers' generic sub-config machinery (building from dicts,
# attn_implementation propagation, to_dict) sees experts registered after the config class exists.
EXPERT_SLOTS: dict[str, SubConfigSpec] = {}


def register_expert(name: str, config_class: type, description: str = "", *, tiny: dict | None = None,
                    full_size: dict | None = None):
    """Class decorator registering ``model_class`` as the vision expert ``name``.

    ``config_class`` is a `PreTrainedConfig` subclass whose instances expose ``input_size`` and
    ``out_channels``; ``tiny`` / ``full_size`` are kwargs of it for the presets. One line adds an
    expert defined anywhere: ``register_expert("mine", MyConfig, tiny=dict(...))(MyExpert)``.
    """
    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
        raise ValueError(f"vision expert names must be lower-case Python identifiers (they become the attribute "
                         f"and weight prefix of the expert), got {name!r}")
    if name in _RESERVED_NAMES:
        raise ValueError(f"{name!r} cannot name a vision expert: the mixture already has an attribute of that name "
                         f"({', '.join(sorted(_RESERVED_NAMES))} are taken)")
    if not (isinstance(config_class, type) and issubclass(config_class, PreTrainedConfig)):
        raise TypeError(f"config_class of vision expert {name!r} must be a PreTrainedConfig subclass, "
                        f"got {config_class!r}")

    def wrap(model_class: type) -> type:
        if name in _EXPERTS and _EXPERTS[name].model_class is not model_class:
            raise ValueError(f"vision expert {name!r} is already registered by {_EXPERTS[name].model_class.__name__}")
        spec = ExpertSpec(name, config_class, model_class, description, tiny=tiny, full_size=full_size)
        _EXPERTS[name] = spec
        EXPERT_SLOTS[spec.slot] = SubConfigSpec(config_class, optional=True)
        if "expert_name" not in model_class.__dict__:
            model_class.expert_name = name
        return model_class

    return wrap


def unregister_expert(name: str) -> None:
    """Remove an expert and its config slot (for tests and notebooks that register temporary experts)."""
    spec = get_expert(name)
    del _EXPERTS[name]
    EXPERT_SLOTS.pop(spec.slot, None)


def list_experts() -> list[str]:
    return sorted(_EXPERTS)


def is_registered(name: str) -> bool:
    return name in _EXPERTS


def get_expert(name: str) -> ExpertSpec:
    try:
        return _EXPERTS[name]
    except KeyError:
        raise ValueError(
            f"unknown vision expert {name!r}; known experts: {', '.join(list_experts())}. An expert defined "
            f"elsewhere must be registered before a config using it is built or loaded: import the module that "
            f"defines it, or call eagle_hf.register_expert({name!r}, ItsConfig)(ItsModel)"
        ) from None


class VisionExpertMixin:
    """The one interface every expert implements.

    * ``config.input_size``: side of the square image the expert consumes; the mixture
      resizes the shared input to it.
    * ``config.out_channels``: channels of the feature map it returns.
    * ``input_space``: ``"normalized"`` (the processor's mean/std-normalised tensor, what
      every original expert but Pix2Struct consumes) or ``"pixels_255"`` (de-normalised
      back to 0..255, which Pix2Struct re-standardises per image). A ``"pixels_255"`` expert whose
      ``forward`` also accepts ``pixel_affine=(scale, offset)`` (per channel: ``x * scale + offset`` are
      the pixels) sets ``takes_pixel_affine = True``; the float32 mixture then hands it the normalised
      input and the affine, which it folds into a pass it makes anyway, instead of writing the pixels.
    * ``forward(pixel_values) -> Tensor[B, out_channels, h, w]``.
    * ``unused_parameters()``: parameters this config leaves out of every forward pass (training
      freezes them: DDP without ``find_unused_parameters`` fails on parameters that get no gradient).
    * ``_no_split_modules``: its repeated block classes (``device_map="auto"`` never splits one).
    """

    input_space: str = "normalized"
    takes_pixel_affine: bool = False
    expert_name: str = ""

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def unused_parameters(self) -> list:
        return []


def tokens_to_map(tokens, height: int, width: int):
    """[B, h*w, C] row-major tokens -> [B, C, h, w]."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, height, width)

"""Registry of vision experts, keyed by the name used in configs and weight prefixes.

An expert is a pair (config class, model class). The name is at once the key of its
sub-config in `EagleVisionConfig` (`<name>_config`), the attribute of the mixture that
holds it, and therefore the prefix of its weights (`model.vision_tower.<name>.`).
"""


from dataclasses import dataclass


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    config_class: type
    model_class: type
    description: str = ""


_EXPERTS: dict[str, ExpertSpec] = {}


def register_expert(name: str, config_class: type, description: str = ""):
    """Class decorator registering `model_class` as the expert `name`."""

    def wrap(model_class: type) -> type:
        if name in _EXPERTS and _EXPERTS[name].model_class is not model_class:
            raise ValueError(f"vision expert {name!r} is already registered by {_EXPERTS[name].model_class.__name__}")
        _EXPERTS[name] = ExpertSpec(name, config_class, model_class, description)
        model_class.expert_name = name
        return model_class

    return wrap


def list_experts() -> list[str]:
    return sorted(_EXPERTS)


def get_expert(name: str) -> ExpertSpec:
    try:
        return _EXPERTS[name]
    except KeyError:
        raise ValueError(f"unknown vision expert {name!r}; known experts: {', '.join(list_experts())}") from None


class VisionExpertMixin:
    """The one interface every expert implements.

    * ``config.input_size``: side of the square image the expert consumes; the mixture
      resizes the shared input to it.
    * ``config.out_channels``: channels of the feature map it returns.
    * ``input_space``: ``"normalized"`` (the processor's mean/std-normalised tensor, what
      every original expert but Pix2Struct consumes) or ``"pixels_255"`` (de-normalised
      back to 0..255, which Pix2Struct re-standardises per image).
    * ``forward(pixel_values) -> Tensor[B, out_channels, h, w]``.
    """

    input_space: str = "normalized"
    expert_name: str = ""

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def input_size(self) -> int:
        return self.config.input_size


def tokens_to_map(tokens, height: int, width: int):
    """[B, h*w, C] row-major tokens -> [B, C, h, w]."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, height, width)

"""Generic experts: any transformers vision tower through its config, any timm model by name.
Each is built tiny, run, saved and reloaded inside a mixture, and loaded from the tower's own
checkpoint format (weights and outputs equal to the tower run by its own library)."""

import pytest
import timm
import torch
from conftest import config_error, make_inputs, seeded_model
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForImageTextToText

from eagle_hf import preset_config
from eagle_hf.modeling.expert_hf import EagleHFExpertConfig
from eagle_hf.modeling.expert_timm import EagleTimmExpertConfig
from eagle_hf.modeling.registry import get_expert

HF_TOWERS = ["siglip", "siglip2", "dinov2", "convnextv2"]
GENERIC = HF_TOWERS + ["timm"]



def tiny(name, **overrides):
    spec = get_expert(name)
    return spec.config_class(**{**spec.preset("tiny"), **overrides})


def image(cfg, batch=2, seed=0):
    return torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(seed))


def native_side(name, cfg):
    """The tower's feature-map side from its own config (not from the expert code)."""
    if name == "convnextv2":
        return cfg.input_size // (4 * 2 ** (cfg.feature_layer - 1))
    if name == "timm":  # convnext_atto: stem /4, then /2 per later stage
        return cfg.input_size // (4 * 2 ** cfg.feature_index)
    return cfg.input_size // cfg.tower_config.patch_size


@pytest.mark.parametrize("name", GENERIC)
def test_generic_expert_forward(name):
    cfg = tiny(name)
    torch.manual_seed(0)
    expert = get_expert(name).model_class(cfg).eval()
    x = image(cfg)
    with torch.no_grad():
        y, y1 = expert(x), expert(x[1:])
    side = native_side(name, cfg)
    assert tuple(y.shape) == (2, cfg.out_channels, side, side)
    assert y.std() > 1e-2
    torch.testing.assert_close(y[1:], y1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HF_TOWERS)
@pytest.mark.parametrize("layer", [-1, 1])
def test_gradient_reaches_exactly_the_used_parameters(name, layer):
    """unused_parameters() (frozen by the training stages, which DDP needs) is exactly the set of
    tower parameters that get no gradient from the feature map."""
    cfg = tiny(name, feature_layer=layer)
    torch.manual_seed(0)
    expert = get_expert(name).model_class(cfg).train()
    expert(image(cfg)).square().mean().backward()
    unused = {id(p) for p in expert.unused_parameters()}
    for pname, p in expert.named_parameters():
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has_grad != (id(p) in unused), f"{name}.{pname}: gradient {has_grad}, listed unused {id(p) in unused}"


@pytest.mark.parametrize("name", GENERIC)
def test_generic_expert_in_a_mixture_saves_and_reloads(name, tmp_path):
    cfg = preset_config("tiny", experts=["clip", name])
    model = seeded_model(cfg)
    inputs = make_inputs(cfg, batch_size=2)
    with torch.no_grad():
        before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(again.config.vision_config.expert_config(name)) is get_expert(name).config_class
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, before)
    # device_map="auto" keeps the tower's own blocks whole.
    inner = getattr(getattr(model.model.vision_tower, name), "tower", None)
    if inner is not None:
        assert inner._no_split_modules and set(inner._no_split_modules) <= set(model._no_split_modules)


@pytest.mark.parametrize("name", HF_TOWERS)
def test_weights_from_the_tower_s_own_save_pretrained(name, tmp_path):
    cfg = tiny(name)
    torch.manual_seed(1)
    released = AutoModel.from_config(cfg.tower_config).eval()  # the tower as its library builds it
    released.save_pretrained(tmp_path / "tower")
    mixture = seeded_model(preset_config("tiny", experts=["clip", name])).model.vision_tower
    expert = getattr(mixture, name)
    assert not torch.equal(next(expert.tower.parameters()), next(released.parameters()))
    mixture.load_expert_weights(name, tmp_path / "tower")
    for key, value in released.state_dict().items():
        assert torch.equal(value, expert.tower.state_dict()[key]), key
    x = image(cfg, batch=1)
    kwargs = {}
    if name == "siglip2":
        kwargs = expert._patchify(x)
        x = kwargs.pop("pixel_values")
    with torch.no_grad():
        hidden = released(x, output_hidden_states=True, **kwargs).hidden_states[cfg.feature_layer]
        got = expert.eval()(image(cfg, batch=1))
    if hidden.ndim == 3:  # tokens: drop CLS/registers, fold into the grid
        side = native_side(name, cfg)
        hidden = hidden[:, hidden.shape[1] - side * side:].transpose(1, 2).reshape(1, -1, side, side)
    torch.testing.assert_close(got, hidden)


def test_weights_from_a_timm_state_dict(tmp_path):
    cfg = tiny("timm")
    torch.manual_seed(2)
    released = timm.create_model(cfg.architecture, pretrained=False, **cfg.model_args).eval()  # with its head
    save_file(released.state_dict(), str(tmp_path / "model.safetensors"))
    mixture = seeded_model(preset_config("tiny", experts=["clip", "timm"])).model.vision_tower
    mixture.load_expert_weights("timm", tmp_path / "model.safetensors")
    expert = mixture.timm.eval()
    for key, value in expert.model.state_dict().items():
        assert torch.equal(value, released.state_dict()[key]), key
    x = image(cfg, batch=1)
    with torch.no_grad():
        want = released.forward_intermediates(x, indices=[cfg.feature_index], intermediates_only=True)[-1]
        torch.testing.assert_close(expert(x), want)


def test_prefix_token_dropping_is_configurable():
    # DINOv2 with 2 registers: CLS + 2 dropped by default; feature_layer picks the hidden state.
    cfg = tiny("dinov2")
    assert cfg.prefix_tokens == 3
    torch.manual_seed(0)
    expert = get_expert("dinov2").model_class(cfg).eval()
    x = image(cfg, batch=1)
    with torch.no_grad():
        hidden = expert.tower(x, output_hidden_states=True).hidden_states[1]
        got = get_expert("dinov2").model_class(tiny("dinov2", feature_layer=1))
        got.load_state_dict(expert.state_dict())
        y = got.eval()(x)
    side = native_side("dinov2", cfg)
    torch.testing.assert_close(y, hidden[:, 3:].transpose(1, 2).reshape(1, -1, side, side))
    with pytest.raises(ValueError, match="set num_prefix_tokens"):
        bad = get_expert("dinov2").model_class(tiny("dinov2", num_prefix_tokens=1)).eval()
        with torch.no_grad():
            bad(x)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: EagleHFExpertConfig(tower_config=dict(model_type="bert")), "not a vision backbone that returns a feature map"),
        (lambda: tiny("siglip", feature_layer=5), "feature_layer=5 is outside the 2 layers"),
        (lambda: tiny("convnextv2", feature_layer=0), "feature_layer 0 is the CNN's stem"),
        (lambda: tiny("timm", architecture="no_such_net"), "architecture='no_such_net' is not a timm model name"),
        (lambda: tiny("timm", feature_index=7), "cannot return a feature map at feature_index=7.*outside its 4"),
        (lambda: EagleTimmExpertConfig(architecture="resnet18", feature_index=-9), "cannot return a feature map"),
    ],
)
def test_bad_generic_configs_fail_when_built(make, match):
    with config_error(match):
        make()

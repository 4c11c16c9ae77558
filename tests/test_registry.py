"""The registry is the source of truth for experts: an expert defined outside the package (here)
is registered with one call and then works in configs, presets, models, save and reload."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_inputs
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoModelForImageTextToText, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

import eagle_hf
from eagle_hf import EagleVLForConditionalGeneration, preset_config
from eagle_hf.modeling.registry import VisionExpertMixin, get_expert, register_expert, unregister_expert


@strict
class ToyExpertConfig(PreTrainedConfig):
    model_type = "toy_expert"
    width: int = 12
    input_size: int = 32
    stride: int = 8
    initializer_range: float = 0.02

    @property
    def out_channels(self) -> int:
        return self.width


class ToyBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + torch.tanh(self.conv(x))


class ToyExpert(VisionExpertMixin, PreTrainedModel):
    config: ToyExpertConfig
    main_input_name = "pixel_values"
    _no_split_modules = ["ToyBlock"]
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.stem = nn.Conv2d(3, config.width, config.stride, stride=config.stride)
        self.block = ToyBlock(config.width)
        self.post_init()

    def forward(self, pixel_values, **kwargs):
        return self.block(self.stem(pixel_values.to(self.stem.weight.dtype)))


TOY_TINY = dict(width=12, input_size=32, stride=8)

# The registration, as a user writes it in their own module (one line).
REGISTER_TOY = 'register_expert("toy", ToyExpertConfig, "a test expert", tiny=TOY_TINY)(ToyExpert)'


@pytest.fixture
def toy():
    eval(REGISTER_TOY)
    try:
        yield get_expert("toy")
    finally:
        unregister_expert("toy")


def test_registered_expert_gets_a_config_slot_and_preset(toy):
    assert "toy" in eagle_hf.list_experts()
    cfg = preset_config("tiny", experts=["clip", "toy"])
    vision = cfg.vision_config
    assert type(vision.toy_config) is ToyExpertConfig
    assert vision.expert_channels == {"clip": vision.clip_config.hidden_size, "toy": 12}
    assert vision.hidden_size == vision.clip_config.hidden_size + 12
    assert vision.sam_config is None
    # The slot is a real sub-config: attn_implementation reaches it like the built-in ones.
    cfg._attn_implementation = "eager"
    assert vision.toy_config._attn_implementation == "eager"


def test_third_party_expert_model_saves_and_reloads(toy, tmp_path):
    cfg = preset_config("tiny", experts=["toy", "convnext"])
    torch.manual_seed(0)
    model = EagleVLForConditionalGeneration(cfg).eval()
    assert isinstance(model.model.vision_tower.toy, ToyExpert)
    assert "ToyBlock" in model._no_split_modules
    inputs = make_inputs(cfg, batch_size=2)
    with torch.no_grad():
        before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["vision_config"]
    assert saved["expert_order"] == ["toy", "convnext"]
    assert saved["toy_config"]["width"] == 12
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    vision = reloaded.config.vision_config
    assert type(vision.toy_config) is ToyExpertConfig and vision.toy_config.width == 12
    assert vision.expert_order == ["toy", "convnext"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, before)
    # The toy expert's weights live under its name.
    assert any(k.startswith("model.vision_tower.toy.stem.") for k in model.state_dict())


def test_unused_slots_of_registered_experts_stay_out_of_config_json(toy):
    saved = preset_config("tiny", experts=["clip"]).vision_config.to_dict()
    assert "toy_config" not in saved
    assert saved["sam_config"] is None  # built-in slots keep their null, as released folders have


def test_loading_a_folder_whose_expert_is_not_registered_names_it(toy, tmp_path):
    torch.manual_seed(0)
    EagleVLForConditionalGeneration(preset_config("tiny", experts=["toy"])).save_pretrained(tmp_path)
    # A fresh process that has eagle_hf but not the toy expert.
    code = textwrap.dedent(f"""
        import eagle_hf
        from transformers import AutoModelForImageTextToText
        try:
            AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r})
        except Exception as err:
            print("ERROR:", err)
        else:
            print("LOADED")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERROR:" in out.stdout, out.stdout + out.stderr
    assert "unknown vision expert 'toy'" in out.stdout
    assert "eagle_hf.register_expert('toy'" in out.stdout


def test_unregistered_expert_in_a_config_names_it_and_the_fix():
    with pytest.raises(ValueError, match=r"unknown vision expert 'toy'.*register_expert\('toy'"):
        eagle_hf.EagleVisionConfig(expert_order=["toy"], toy_config={"width": 4}, image_size=64)


def test_register_refuses_bad_names_and_config_classes():
    with pytest.raises(ValueError, match="lower-case Python identifiers"):
        register_expert("My-Expert", ToyExpertConfig)
    with pytest.raises(TypeError, match="PreTrainedConfig subclass"):
        register_expert("mine", dict)


def test_expert_without_tiny_preset_says_how_to_add_one():
    register_expert("toy_nopreset", ToyExpertConfig)(ToyExpert)
    try:
        with pytest.raises(ValueError, match="has no tiny preset.*tiny=dict"):
            preset_config("tiny", experts=["toy_nopreset"])
    finally:
        unregister_expert("toy_nopreset")


class ToyTable(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.register_buffer("values", torch.zeros(width))


class ToyExpertWithTable(ToyExpert):
    """An expert with a buffer computed from its config, which it declares recomputable (as EVA does
    for its RoPE tables): the generic EAGLE model knows none of these names."""

    _keys_to_ignore_on_load_missing = [r"\.table\.values$"]

    def __init__(self, config):
        super().__init__(config)
        self.table = ToyTable(config.width)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ToyTable):
            init.copy_(module.values, torch.arange(self.config.width, dtype=torch.float32) / self.config.width)

    def forward(self, pixel_values, **kwargs):
        return super().forward(pixel_values) * (1 + self.table.values[None, :, None, None])


@pytest.mark.parametrize("declared", [True, False])
def test_an_expert_declares_its_recomputed_buffers(tmp_path, declared):
    from safetensors.torch import load_file, save_file

    cls = ToyExpertWithTable if declared else type("Undeclared", (ToyExpertWithTable,),
                                                   {"_keys_to_ignore_on_load_missing": None})
    register_expert("toytable", ToyExpertConfig, tiny=TOY_TINY)(cls)
    try:
        torch.manual_seed(0)
        model = EagleVLForConditionalGeneration(preset_config("tiny", experts=["clip", "toytable"])).eval()
        torch.testing.assert_close(model.model.vision_tower.toytable.table.values, torch.arange(12.0) / 12)
        model.save_pretrained(tmp_path)
        (weights,) = tmp_path.glob("*.safetensors")
        state = load_file(weights)
        assert "model.vision_tower.toytable.table.values" in state
        del state["model.vision_tower.toytable.table.values"]
        save_file(state, weights, metadata={"format": "pt"})
        if not declared:
            with pytest.raises(ValueError, match="expert toytable would be randomly initialised"):
                EagleVLForConditionalGeneration.from_pretrained(tmp_path)
            return
        loaded = EagleVLForConditionalGeneration.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded.model.vision_tower.toytable.table.values, torch.arange(12.0) / 12)
        inputs = make_inputs(model.config, n_images=1)
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    finally:
        unregister_expert("toytable")

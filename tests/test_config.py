"""EagleVLConfig / EagleVisionConfig: the single source of truth for the expert mix."""

import json

import pytest
import torch
from conftest import config_dict, config_error, distinct_width_vision_config, make_inputs, make_pixel_values, seeded_model
from transformers import AutoConfig

import eagle_hf
from eagle_hf import EagleVisionConfig, EagleVisionTower, EagleVLConfig, preset_config, vision_preset
from eagle_hf.modeling.presets import TINY_TEXT
from eagle_hf.modeling.registry import get_expert



# --- expert order ----------------------------------------------------------------------------

def test_expert_order_drives_concatenation():
    """Swapping the order swaps the channel blocks; each block's values stay the same."""
    cfg_a = distinct_width_vision_config()
    order_b = list(reversed(cfg_a.expert_order))
    cfg_b = distinct_width_vision_config()
    cfg_b.expert_order = order_b
    assert cfg_b.hidden_size == cfg_a.hidden_size
    assert cfg_a.channel_offsets != cfg_b.channel_offsets
    torch.manual_seed(0)
    tower_a = EagleVisionTower(cfg_a).eval()
    tower_b = EagleVisionTower(cfg_b).eval()
    # Weights are keyed by expert name, so they move across orders unchanged.
    tower_b.load_state_dict(tower_a.state_dict(), strict=True)
    pixel_values = make_pixel_values(cfg_a, 2)
    with torch.no_grad():
        fused_a = tower_a(pixel_values).last_hidden_state
        fused_b = tower_b(pixel_values).last_hidden_state

    def block(fused, cfg, name):
        start = cfg.channel_offsets[name]
        return fused[..., start:start + cfg.expert_channels[name]]

    for name in cfg_a.expert_order:
        assert torch.equal(block(fused_a, cfg_a, name), block(fused_b, cfg_b, name)), name
    assert torch.equal(fused_b, torch.cat([block(fused_a, cfg_a, n) for n in order_b], dim=-1))
    assert not torch.equal(fused_a, fused_b)


def test_channel_offsets_follow_order():
    cfg = distinct_width_vision_config()
    widths = cfg.expert_channels
    assert list(widths) == cfg.expert_order
    start = 0
    for name in cfg.expert_order:
        assert cfg.channel_offsets[name] == start
        start += widths[name]
    assert start == cfg.hidden_size == sum(widths.values())


@pytest.mark.parametrize(
    "preset, order, offsets, width",
    [
        # shared/reference/eagle-original.md §1.5: released X5 and X4 orders and slices.
        ("x5", ["clip", "convnext", "sam", "pix2struct", "eva"],
         {"clip": 0, "convnext": 1024, "sam": 4096, "pix2struct": 5120, "eva": 6656}, 7680),
        ("x4", ["clip", "convnext", "pix2struct", "eva"],
         {"clip": 0, "convnext": 1024, "pix2struct": 4096, "eva": 5632}, 6656),
    ],
)
def test_released_presets(preset, order, offsets, width):
    cfg = vision_preset(preset)
    assert cfg.expert_order == order
    assert cfg.channel_offsets == offsets
    assert cfg.hidden_size == width
    assert (cfg.image_size, cfg.grid_size, cfg.num_image_tokens) == (1024, 32, 1024)


def test_bare_vision_config_is_the_released_x5_mix():
    cfg = EagleVisionConfig()
    assert cfg.expert_order == vision_preset("x5").expert_order
    assert cfg.hidden_size == 7680
    # Giving only some expert slots makes those the mix, in registry order.
    partial = EagleVisionConfig(sam_config=get_expert("sam").preset("tiny"), clip_config=get_expert("clip").preset("tiny"), image_size=64)
    assert partial.expert_order == ["clip", "sam"]
    assert partial.eva_config is None


# --- derived numbers -------------------------------------------------------------------------

def test_derived_numbers_follow_changes():
    cfg = preset_config("tiny")
    vc = cfg.vision_config
    assert vc.hidden_size == sum(vc.expert_config(n).out_channels for n in vc.expert_order)
    assert cfg.image_seq_length == vc.num_image_tokens == vc.grid_size**2 == 16

    before = vc.hidden_size
    vc.clip_config.hidden_size += 8
    assert vc.hidden_size == before + 8
    vc.sam_config.output_channels = 5  # pixel-unshuffle 2: 4 * 5 channels
    assert vc.expert_channels["sam"] == 20
    assert vc.hidden_size == sum(vc.expert_channels.values())

    vc.grid_size = 7
    assert vc.num_image_tokens == 49
    assert cfg.image_seq_length == 49

    vc.expert_order = ["eva", "clip"]
    assert vc.hidden_size == vc.eva_config.hidden_size + vc.clip_config.hidden_size
    assert vc.channel_offsets == {"eva": 0, "clip": vc.eva_config.hidden_size}


def test_derived_numbers_are_not_stored():
    d = preset_config("tiny").to_dict()
    assert "image_seq_length" not in d
    for key in ("hidden_size", "num_image_tokens", "channel_offsets", "expert_channels"):
        assert key not in d["vision_config"], key


def test_model_uses_the_derived_numbers():
    cfg = preset_config("tiny")
    cfg.vision_config.convnext_config.dims = [8, 16, 24, 40]
    model = seeded_model(cfg)
    assert model.model.multi_modal_projector.linear_1.in_features == cfg.vision_config.hidden_size == 168
    assert model.model.multi_modal_projector.linear_1.out_features == cfg.text_config.hidden_size


# --- serialisation ---------------------------------------------------------------------------

def test_to_dict_from_dict_round_trip():
    cfg = preset_config("tiny", projector_depth=3)
    cfg.vision_config.expert_order = ["sam", "clip", "eva"]
    d = cfg.to_dict()
    json.dumps(d)  # JSON-serialisable
    again = EagleVLConfig.from_dict(d)
    assert again.to_dict() == d
    assert again.vision_config.expert_order == ["sam", "clip", "eva"]
    assert again.projector_depth == 3
    assert again.image_token_id == cfg.image_token_id
    assert again.text_config.model_type == "llama"
    for name in eagle_hf.list_experts():
        sub = cfg.vision_config.expert_config(name)
        assert type(again.vision_config.expert_config(name)) is type(sub)
    assert again.vision_config.hidden_size == cfg.vision_config.hidden_size
    assert again.image_seq_length == cfg.image_seq_length


def test_save_and_auto_config_round_trip(tmp_path):
    cfg = preset_config("tiny", experts=["pix2struct", "clip"])
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is EagleVLConfig
    assert config_dict(loaded) == config_dict(cfg)
    assert loaded.vision_config.expert_order == ["pix2struct", "clip"]
    assert loaded.vision_config.sam_config is None


# --- grid size -------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [3, 8])
def test_grid_sizes_other_than_four(grid):
    cfg = preset_config("tiny")
    cfg.vision_config.grid_size = grid
    assert cfg.image_seq_length == grid**2
    model = seeded_model(cfg)
    inputs = make_inputs(cfg, n_images=1, batch_size=2)
    assert int((inputs["input_ids"] == cfg.image_token_id).sum()) == 2 * grid**2
    with torch.no_grad():
        out = model(**inputs)
    assert tuple(out.logits.shape) == (*inputs["input_ids"].shape, cfg.text_config.vocab_size)
    image = out.image_outputs
    assert tuple(image.last_hidden_state.shape) == (2, grid**2, cfg.vision_config.hidden_size)
    assert [tuple(t.shape) for t in image.pooler_output] == [(grid**2, cfg.text_config.hidden_size)] * 2


# --- projector -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, depth, n_linear", [("mlp", 2, 2), ("mlp", 3, 3), ("mlp", 1, 1), ("linear", 5, 1)])
def test_projector_shapes(kind, depth, n_linear):
    cfg = preset_config("tiny", projector_type=kind, projector_depth=depth)
    projector = seeded_model(cfg).model.multi_modal_projector
    linears = [m for m in projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_linear == cfg.projector_layers
    assert linears[0].in_features == cfg.vision_config.hidden_size
    assert all(m.out_features == cfg.text_config.hidden_size for m in linears)
    features = torch.randn(2, 5, cfg.vision_config.hidden_size)
    assert tuple(projector(features).shape) == (2, 5, cfg.text_config.hidden_size)


def test_identity_projector_with_matching_widths():
    width = preset_config("tiny").vision_config.hidden_size
    cfg = preset_config("tiny", text_config={**TINY_TEXT, "hidden_size": width}, projector_type="identity")
    assert cfg.projector_layers == 0
    model = seeded_model(cfg)
    assert list(model.model.multi_modal_projector.parameters()) == []
    pixel_values = make_pixel_values(cfg, 1)
    with torch.no_grad():
        out = model.get_image_features(pixel_values)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0])


# --- validation ------------------------------------------------------------------------------

def test_empty_expert_order():
    with config_error("at least one expert"):
        EagleVisionConfig(expert_order=[], image_size=64)


def test_duplicate_expert():
    with config_error("lists an expert twice"):
        EagleVisionConfig(expert_order=["clip", "clip"], clip_config=get_expert("clip").preset("tiny"), image_size=64)


def test_missing_expert_slot():
    with config_error("'sam' is in expert_order but sam_config is not set"):
        EagleVisionConfig(expert_order=["clip", "sam"], clip_config=get_expert("clip").preset("tiny"), image_size=64)


def test_unknown_expert_in_order():
    with config_error("unknown vision expert 'dino'; known experts: " + ", ".join(eagle_hf.list_experts())):
        EagleVisionConfig(expert_order=["clip", "dino"], clip_config=get_expert("clip").preset("tiny"), image_size=64)


def test_identity_projector_with_mismatched_widths():
    with config_error(r"identity projector needs the fused vision channels \(160\) to equal the LLM hidden "
                      r"size \(64\)"):
        preset_config("tiny", projector_type="identity")


def test_bad_projector_type():
    with config_error("projector_type must be 'mlp', 'linear' or 'identity', got 'qformer'"):
        preset_config("tiny", projector_type="qformer")


def test_bad_projector_depth():
    with config_error("projector_depth must be >= 1"):
        preset_config("tiny", projector_depth=0)


def test_bad_grid_size():
    with config_error("must be positive"):
        EagleVisionConfig(expert_order=["clip"], clip_config=get_expert("clip").preset("tiny"), image_size=64, grid_size=0)


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        ("clip", {"feature_layer": 5}, "outside the 2 layers"),
        ("clip", {"input_size": 50}, "not a multiple of patch_size"),
        ("convnext", {"feature_stage": 4}, "outside the 4 stages"),
        ("convnext", {"dims": [8, 16]}, "differ in length"),
        ("eva", {"window_size": 3}, "does not tile"),
        ("pix2struct", {"patch_embed_hidden_size": 100}, "must equal 3 \\* patch_size\\*\\*2"),
    ],
)
def test_expert_config_validation(name, overrides, match):
    spec = eagle_hf.modeling.get_expert(name)
    with config_error(match):
        spec.config_class(**{**get_expert(name).preset("tiny"), **overrides})

"""The paper's five fusions (EagleVisionConfig.fusion): each declares what it hands the projector,
and the model, the processor's token count and save/load follow from the config."""

import pytest
import torch
from conftest import config_error, left_pad, make_inputs, make_pixel_values, make_prompt, seeded_model
from transformers import AutoModelForImageTextToText

from eagle_hf import EagleVisionTower, preset_config, vision_preset
from eagle_hf.modeling.fusion import FUSIONS

FUSION_NAMES = list(FUSIONS)
# clip (48 px, the low-resolution branch) then two 64 px experts; widths 32, 32, 32.
EXPERTS = ["clip", "convnext", "sam"]
SIZES = dict(fusion_num_heads=2, fusion_mining_factor=2, fusion_num_points=2)


def fusion_config(fusion, **kw):
    return preset_config("tiny", experts=EXPERTS, vision_kwargs=dict(fusion=fusion, **SIZES, **kw))



def test_the_paper_s_five_fusions_are_registered():
    assert set(FUSION_NAMES) == {"channel_concat", "sequence_append", "injection", "patch_mining", "deformable"}


# Tokens and width per fusion, from the tiny experts' own sizes (grid 4: 16 tokens; 3 experts of 32 channels).
EXPECTED = {"channel_concat": (16, 96), "sequence_append": (48, 32), "injection": (16, 32),
            "patch_mining": (16, 32), "deformable": (16, 32)}


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_declared_tokens_and_width_drive_model_and_processor(fusion):
    cfg = fusion_config(fusion)
    tokens, width = EXPECTED[fusion]
    assert (cfg.image_seq_length, cfg.vision_config.hidden_size) == (tokens, width)
    model = seeded_model(cfg)
    assert model.model.multi_modal_projector.linear_1.in_features == width
    out = model.model.vision_tower(make_pixel_values(cfg, 2)).last_hidden_state
    assert tuple(out.shape) == (2, tokens, width)
    assert torch.isfinite(out).all()


def test_channel_concat_is_the_default_and_the_plain_concatenation():
    cfg = vision_preset("tiny")
    assert cfg.fusion == "channel_concat"
    torch.manual_seed(0)
    tower = EagleVisionTower(cfg).eval()
    assert not list(tower.fusion.parameters())  # no new weights: released checkpoints keep their keys
    with torch.no_grad():
        out = tower(make_pixel_values(cfg, 2), output_expert_features=True)
    torch.testing.assert_close(out.last_hidden_state, torch.cat(list(out.expert_features.values()), -1),
                               rtol=0, atol=0)


def test_sequence_append_is_each_expert_projected_in_turn():
    cfg = fusion_config("sequence_append", fusion_hidden_size=24).vision_config
    torch.manual_seed(0)
    tower = EagleVisionTower(cfg).eval()
    with torch.no_grad():
        out = tower(make_pixel_values(cfg, 1), output_expert_features=True)
    n = cfg.grid_size**2
    for i, name in enumerate(EXPERTS):
        lin = tower.fusion.proj[name]
        expected = out.expert_features[name] @ lin.weight.T + lin.bias
        torch.testing.assert_close(out.last_hidden_state[:, i * n:(i + 1) * n], expected)


def test_patch_mining_queries_only_the_patches_under_each_cell():
    """Changing the high-resolution map in one grid cell changes that cell's token only."""
    cfg = fusion_config("patch_mining").vision_config
    torch.manual_seed(0)
    fusion = EagleVisionTower(cfg).fusion.eval()
    g, m = cfg.grid_size, cfg.fusion_mining_factor
    blocks = {n: torch.randn(1, g * g, 32) for n in EXPERTS}
    maps = {n: torch.randn(1, 32, g * m, g * m) for n in EXPERTS}
    base = fusion(blocks, maps)
    maps["sam"] = maps["sam"].clone()
    maps["sam"][..., :m, :m] += 5.0  # the top-left cell's m x m patches
    changed = (fusion(blocks, maps) - base).abs().sum(-1)[0]
    assert changed[0] > 1e-4
    assert changed[1:].abs().max() == 0


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_gradients_reach_fusion_and_every_expert(fusion):
    cfg = fusion_config(fusion)
    torch.manual_seed(0)
    model = seeded_model(cfg).train()
    loss = model(**make_inputs(cfg, batch_size=2), labels=make_inputs(cfg, batch_size=2)["input_ids"]).loss
    loss.backward()
    tower = model.model.vision_tower
    for pname, p in tower.fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{fusion}: no gradient for fusion.{pname}"
    for name in EXPERTS:
        grads = [p.grad for p in getattr(tower, name).parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, f"{fusion}: no gradient reaches {name}"


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_batched_equals_one_by_one_and_generate(fusion):
    cfg = fusion_config(fusion)
    model = seeded_model(cfg)
    inputs = make_inputs(cfg, batch_size=2, ragged=True)
    with torch.no_grad():
        feats = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state
        for i in range(2):
            single = model.model.vision_tower(inputs["pixel_values"][i:i + 1]).last_hidden_state
            torch.testing.assert_close(feats[i:i + 1], single, rtol=1e-5, atol=1e-5)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    for i in range(2):
        prompt = make_prompt(cfg, 1, 3 + i, 4, seed=i)
        ids, mask = left_pad([prompt])
        one = model.generate(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"][i:i + 1],
                             max_new_tokens=4, do_sample=False)
        assert out[i, -4:].tolist() == one[0, -4:].tolist()


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_save_load_round_trip(fusion, tmp_path):
    cfg = fusion_config(fusion)
    model = seeded_model(cfg)
    inputs = make_inputs(cfg, batch_size=1)
    with torch.no_grad():
        before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert again.config.vision_config.fusion == fusion
    assert again.config.image_seq_length == cfg.image_seq_length
    fusion_keys = [k for k in model.state_dict() if ".fusion." in k]
    assert bool(fusion_keys) == (fusion != "channel_concat")
    for key in fusion_keys:
        assert torch.equal(model.state_dict()[key], again.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, before)


def test_deformable_points_start_apart():
    cfg = fusion_config("deformable").vision_config
    torch.manual_seed(0)
    fusion = EagleVisionTower(cfg).fusion
    bias = fusion.offsets.bias.view(cfg.fusion_num_heads, len(EXPERTS), cfg.fusion_num_points, 2)
    assert fusion.offsets.weight.abs().sum() == 0
    assert torch.unique(bias.reshape(-1, 2), dim=0).shape[0] == cfg.fusion_num_heads * cfg.fusion_num_points
    # the first point of head 0 is one grid cell to the right
    torch.testing.assert_close(bias[0, 0, 0], torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize(
    "kwargs, experts, match",
    [
        (dict(fusion="concat"), EXPERTS, "fusion='concat' is not one of channel_concat, sequence_append"),
        (dict(fusion="injection"), ["clip"], "fusion='injection' fuses a low-resolution expert.*add a high-resolution"),
        (dict(fusion="patch_mining"), ["sam", "clip"], "needs a high-resolution branch.*put the lowest-resolution"),
        (dict(fusion="patch_mining", fusion_num_heads=3), EXPERTS, "fusion_num_heads=3 does not divide the width 32"),
        (dict(fusion="deformable", fusion_num_heads=5), EXPERTS, "fusion_num_heads=5 does not divide"),
        (dict(fusion="deformable", fusion_num_points=0), EXPERTS, "fusion_num_points must be >= 1"),
        (dict(fusion="patch_mining", fusion_mining_factor=0), EXPERTS, "fusion_mining_factor must be >= 1"),
        (dict(fusion="sequence_append", fusion_hidden_size=0), EXPERTS, "fusion_hidden_size must be positive"),
    ],
)
def test_bad_fusion_configs_fail_when_built(kwargs, experts, match):
    with config_error(match):
        vision_preset("tiny", experts=experts, **kwargs)

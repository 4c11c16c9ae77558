"""``EagleVisionConfig.grayscale_experts``: experts that see the image without its colour."""

import torch
from conftest import config_error, seeded_model

from eagle_hf import EagleVLConfig, EagleVLForConditionalGeneration, preset_config
from eagle_hf.modeling.modeling_mixture import EagleVisionTower

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601, as PIL's convert("L")


def grey_config(names=("clip", "pix2struct")):
    cfg = preset_config("tiny")
    cfg.vision_config.grayscale_experts = list(names)
    return EagleVLConfig.from_dict(cfg.to_dict())  # validated as a user's config would be


def image_pair(cfg, n=2, seed=0):
    """Colour pixels in [0, 1] and the same images made grey by hand (luma in all three channels),
    both normalised as the processor normalises them."""
    vision = cfg.vision_config
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (vision.image_mean, vision.image_std))
    pixels = torch.rand(n, 3, vision.image_size, vision.image_size, generator=torch.Generator().manual_seed(seed))
    grey = (pixels * LUMA).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    return (pixels - mean) / std, (grey - mean) / std


def test_grey_experts_see_the_luma_image_and_the_others_the_colour_image():
    cfg = grey_config()
    tower = EagleVisionTower(cfg.vision_config).eval()
    colour, grey = image_pair(cfg)
    with torch.no_grad():
        seen, expected = tower.expert_inputs(colour), tower.expert_inputs(grey)
        plain = EagleVisionTower(preset_config("tiny").vision_config).eval().expert_inputs(colour)
    for name in cfg.vision_config.expert_order:
        if name in cfg.vision_config.grayscale_experts:
            # clip is in the normalised space, pix2struct in 0..255: both match the hand-made grey image.
            torch.testing.assert_close(seen[name], expected[name], atol=1e-4, rtol=1e-5)
            assert not torch.allclose(seen[name], plain[name], atol=1e-2)
        else:
            assert torch.equal(seen[name], plain[name]), name


def test_grey_expert_features_ignore_colour_in_eval_mode():
    cfg = grey_config(["clip"])
    model = seeded_model(cfg)
    colour, grey = image_pair(cfg, seed=1)
    with torch.no_grad():
        a = model.model.vision_tower(colour, output_expert_features=True).expert_features
        b = model.model.vision_tower(grey, output_expert_features=True).expert_features
    torch.testing.assert_close(a["clip"], b["clip"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a["convnext"], b["convnext"], atol=1e-3)  # a colour expert still sees colour


def test_training_mode_mixes_the_channels_with_random_convex_weights():
    cfg = grey_config(["clip"])
    tower = EagleVisionTower(cfg.vision_config).train()
    vision = cfg.vision_config
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (vision.image_mean, vision.image_std))
    red = torch.zeros(8, 3, vision.image_size, vision.image_size)
    red[:, 0] = 1.0  # pure red: the grey level is the red channel's weight
    torch.manual_seed(0)
    x = tower.expert_inputs((red - mean) / std)["clip"] * std + mean
    assert torch.allclose(x[:, 0], x[:, 1], atol=1e-5) and torch.allclose(x[:, 0], x[:, 2], atol=1e-5)
    weight = x[:, 0, 0, 0]
    assert torch.allclose(x[:, 0], weight.view(-1, 1, 1).expand_as(x[:, 0]), atol=1e-5)  # one weight per image
    assert ((weight > 0) & (weight < 1)).all()
    assert weight.std() > 0.05 and (weight - 0.299).abs().max() > 0.05  # random, not the luma weight
    # eval mode is deterministic luma again
    tower.eval()
    x = tower.expert_inputs((red - mean) / std)["clip"] * std + mean
    torch.testing.assert_close(x[:, 0], torch.full_like(x[:, 0], 0.299), atol=1e-5, rtol=0)


def test_save_load_round_trip_keeps_the_grey_experts(tmp_path):
    cfg = grey_config(["clip"])
    model = seeded_model(cfg)
    model.save_pretrained(tmp_path)
    loaded = EagleVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.vision_config.grayscale_experts == ["clip"]
    colour, _ = image_pair(cfg, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded.model.vision_tower(colour).last_hidden_state,
                           model.model.vision_tower(colour).last_hidden_state)


def test_unknown_grey_expert_is_refused_when_the_config_is_built():
    values = preset_config("tiny").to_dict()
    values["vision_config"]["grayscale_experts"] = ["sam", "siglip"]
    with config_error(r"grayscale_experts names \['siglip'\].*expert_order"):
        EagleVLConfig.from_dict(values)

"""Per-expert pre-alignment (the paper's first stage): each expert with its own projector against
the frozen LLM, one at a time, then combined in the mixture; runnable as `eagle-hf train` stages."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from eagle_hf.training.data import LlavaDataset
from eagle_hf.training.prealign import single_expert_model
from eagle_hf.training.synthetic import make_synthetic_vqa
from eagle_hf.training.tiny import build_tiny


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    return make_synthetic_vqa(tmp_path_factory.mktemp("vqa"), n_train=24, n_test=4, seed=3)


@pytest.fixture(scope="module")
def rows(vqa):
    return LlavaDataset(json.loads(vqa["train"].read_text()), vqa["image_folder"]).examples


def test_single_expert_model_shares_the_mixture_s_modules(rows):
    model, _ = build_tiny(rows, seed=0)
    vision = model.config.vision_config
    for name in vision.expert_order:
        sub = single_expert_model(model, name)
        assert sub.config.vision_config.expert_order == [name]
        assert getattr(sub.model.vision_tower, name) is getattr(model.model.vision_tower, name)
        assert sub.model.language_model is model.model.language_model and sub.lm_head is model.lm_head
        assert sub.model.multi_modal_projector is not model.model.multi_modal_projector
        assert sub.model.multi_modal_projector.linear_1.in_features == vision.expert_channels[name]
        pixels = torch.randn(2, 3, vision.image_size, vision.image_size)
        with torch.no_grad():
            feats = sub.model.get_image_features(pixel_values=pixels).last_hidden_state
            alone = getattr(model.model.vision_tower, name)
            full = model.model.vision_tower(pixels, output_expert_features=True).expert_features[name]
        assert alone is not None
        torch.testing.assert_close(feats, full)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "eagle_hf.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


def test_prealign_experts_then_pretrain_as_train_stages(vqa, rows, tmp_path):
    out = tmp_path / "prealigned"
    r = _cli("train", "--data", vqa["train"], "--image-folder", vqa["image_folder"], "--model", "tiny",
             "--output-dir", out, "--stage", "prealign-experts", "--max-steps", 4, "--batch-size", 4,
             "--save-steps", 100, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    initial, _ = build_tiny(rows, seed=0)  # what --model tiny starts from (same rows, same seed)
    order = initial.config.vision_config.expert_order
    assert list(summary["per_expert"]) == order and all(v["steps"] == 2 for v in summary["per_expert"].values())
    before, after = initial.state_dict(), load_file(str(out / "model.safetensors"))
    for name in order:  # every expert moved, each in its own run
        keys = [k for k in after if k.startswith(f"model.vision_tower.{name}.")]
        assert any(not torch.equal(after[k], before[k]) for k in keys), name
    for k in after:  # the LLM stayed frozen; the joint projector is left for the next stage
        if "vision_tower" not in k:
            assert torch.equal(after[k], before[k]), k
    r = _cli("train", "--data", vqa["train"], "--image-folder", vqa["image_folder"], "--model", out,
             "--output-dir", tmp_path / "joint", "--stage", "pretrain", "--max-steps", 2, "--batch-size", 4,
             "--save-steps", 100, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    joint = load_file(str(tmp_path / "joint" / "model.safetensors"))
    assert any(not torch.equal(joint[k], after[k]) for k in joint if "multi_modal_projector" in k)
    assert all(torch.equal(joint[k], after[k]) for k in joint if "vision_tower" in k)


def test_prealign_experts_needs_a_step_count(vqa, tmp_path):
    r = _cli("train", "--data", vqa["train"], "--image-folder", vqa["image_folder"], "--model", "tiny",
             "--output-dir", tmp_path / "x", "--stage", "prealign-experts", "--epochs", 1)
    assert r.returncode != 0 and "needs --max-steps" in r.stderr

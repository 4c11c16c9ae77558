"""accelerate ``device_map`` loading: CPU and disk offload give the same logits and greedy tokens as the
plain model. (A map over several accelerators is checked by ``examples/gpu/check_vllm_and_device_map.py``,
which needs a GPU.)"""

import pytest
import torch

import eagle_hf  # noqa: F401
from eagle_hf import EagleVLForConditionalGeneration
from eagle_hf.testing import make_image


def _inputs(processor):
    messages = [{"role": "user", "content": [{"type": "image", "image": make_image(seed=2)},
                                             {"type": "text", "text": "What is in this image?"}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def _maps(experts):
    """Device maps that put parts of the model on the disk (accelerate's offload) and the rest on the CPU."""
    odd = {f"model.vision_tower.{name}": ("disk" if i % 2 else "cpu") for i, name in enumerate(experts)}
    even = {f"model.vision_tower.{name}": ("cpu" if i % 2 else "disk") for i, name in enumerate(experts)}
    return {
        "llm-on-disk": {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu",
                        "model.language_model": "disk", "lm_head": "cpu"},
        "odd-experts-on-disk": {**odd, "model.multi_modal_projector": "disk", "model.language_model": "cpu",
                                "lm_head": "cpu"},
        "even-experts-on-disk": {**even, "model.multi_modal_projector": "cpu", "model.language_model": "cpu",
                                 "lm_head": "disk"},
    }


@pytest.mark.parametrize("which", ["llm-on-disk", "odd-experts-on-disk", "even-experts-on-disk"])
def test_device_map_with_disk_offload_matches_the_plain_model(ckpt, tmp_path, which):
    path, _, processor = ckpt
    plain = EagleVLForConditionalGeneration.from_pretrained(path).eval()
    device_map = _maps(plain.config.vision_config.expert_order)[which]
    offloaded = EagleVLForConditionalGeneration.from_pretrained(path, device_map=device_map,
                                                                offload_folder=str(tmp_path / "offload")).eval()
    assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}
    # Weights on the disk stay on the meta device until accelerate's hooks load them for a forward.
    disk_module = next(k for k, v in offloaded.hf_device_map.items() if v == "disk")
    assert next(offloaded.get_submodule(disk_module).parameters()).device.type == "meta"
    inputs = _inputs(processor)
    with torch.no_grad():
        expected = plain(**inputs).logits
        got = offloaded(**inputs).logits
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)
        a = plain.generate(**inputs, max_new_tokens=6, do_sample=False)
        b = offloaded.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_device_map_auto_with_a_cpu_budget_offloads_to_disk(ckpt, tmp_path):
    path, _, processor = ckpt
    plain = EagleVLForConditionalGeneration.from_pretrained(path).eval()
    size = sum(p.numel() * p.element_size() for p in plain.parameters())
    model = EagleVLForConditionalGeneration.from_pretrained(
        path, device_map="auto", max_memory={"cpu": size // 3}, offload_folder=str(tmp_path / "offload")).eval()
    assert "disk" in set(model.hf_device_map.values()) and "cpu" in set(model.hf_device_map.values())
    # _no_split_modules keeps every expert block whole: no map entry names a part of one.
    inputs = _inputs(processor)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, plain(**inputs).logits, atol=1e-6, rtol=0)

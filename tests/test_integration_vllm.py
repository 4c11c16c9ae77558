"""The vLLM Transformers-backend contract, driven on the CPU the way vLLM 0.33 drives a model.

vLLM itself needs a GPU and cannot be installed here; this test follows its source:
``vllm/model_executor/models/transformers/multimodal.py`` (``OffsetsMultiModalProcessor``: the processor
is called on the prompt text with ``return_text_replacement_offsets=True``, each entry's ``replacement``
is tokenised without special tokens and replaces the tokens of ``processor.image_token`` in vLLM's own
tokenisation of the prompt; ``num_image_patches`` from ``_get_num_multimodal_tokens``;
``embed_multimodal`` calls ``get_image_features`` and takes ``pooler_output``) and
``.../transformers/base.py`` (``AutoModel.from_config``, ``text_config._attn_implementation = "vllm"``,
``forward``: one row of all requests, ``inputs_embeds`` + ``position_ids``, ``use_cache=False,
return_dict=False``, hidden states ``outputs[0][0]``). vLLM's paged attention keeps requests apart inside
the row; here a registered attention function does the same from the position ids. The end-to-end check
with vLLM itself is ``examples/gpu/check_vllm_and_device_map.py`` (GPU only).
"""

from importlib.metadata import entry_points

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import eagle_hf  # noqa: F401
from eagle_hf import EagleVLForConditionalGeneration, EagleVLModel
from eagle_hf.testing import build_tiny_checkpoint, make_image


def per_request_causal_attention(module, query, key, value, attention_mask, scaling=None, position_ids=None,
                                 **kwargs):
    """What vLLM's attention computes for a flattened row: causal attention within each request (a request
    starts where its positions restart at 0)."""
    positions = position_ids.reshape(-1)
    request = torch.cumsum(positions == 0, dim=0)
    allowed = (request[:, None] == request[None, :]) & (positions[None, :] <= positions[:, None])
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register("per_request_causal", per_request_causal_attention)


@pytest.fixture(scope="module")
def short_ckpt(tmp_path_factory):
    """A tiny checkpoint whose LLM allows 96 positions, so that two requests together exceed it."""
    path = tmp_path_factory.mktemp("tiny-eagle-96")
    model, processor = build_tiny_checkpoint(path, max_position_embeddings=96)
    return path, model, processor


def vllm_style_prompt_ids(processor, prompt: str, images) -> tuple[list[int], list[torch.Tensor]]:
    """The prompt ids vLLM builds: its own tokenisation of the prompt, each image token replaced by the
    tokens of the replacement the processor reports; plus the pixel rows of each image."""
    out = processor(text=prompt, images=images, return_text_replacement_offsets=True, return_tensors="pt")
    offsets = out["text_replacement_offsets"][0]
    assert [entry["type"] for entry in offsets] == ["image"] * len(images)
    tokenizer = processor.tokenizer
    target = tokenizer.encode(processor.image_token, add_special_tokens=False)
    assert target == [processor.image_token_id]
    replacements = [tokenizer.encode(entry["replacement"], add_special_tokens=False) for entry in offsets]
    for ids in replacements:
        assert len(ids) == processor.image_seq_length
        assert int(torch.tensor(ids).mode().values) == processor.image_token_id  # vLLM's embed token
    num_patches = processor._get_num_multimodal_tokens(image_sizes=[(im.height, im.width) for im in images])
    assert list(num_patches["num_image_patches"]) == [1] * len(images)
    assert out["pixel_values"].shape[0] == sum(num_patches["num_image_patches"])
    expanded, replacement = [], iter(replacements)
    for token in tokenizer.encode(prompt):
        expanded.extend(next(replacement) if token == target[0] else [token])
    # The processor's own ids for the same prompt are the same.
    assert expanded == out["input_ids"][0].tolist()
    return expanded, list(out["pixel_values"])


def test_processor_reports_replacement_offsets_in_the_given_text(ckpt):
    _, _, processor = ckpt
    prompt = "USER: <image>\nWhat is it? ASSISTANT:"
    out = processor(text=[prompt, "<image><image> x"], images=[[make_image()], [make_image(), make_image(seed=1)]],
                    return_text_replacement_offsets=True, padding=True)
    first, second = out["text_replacement_offsets"]
    start = prompt.index("<image>")
    assert first == [{"type": "image", "span": (start, start + 7), "new_span": (start, start + 7), "text": "<image>",
                      "replacement": "<image>" * processor.image_seq_length}]
    assert [entry["span"] for entry in second] == [(0, 7), (7, 14)]
    assert "text_replacement_offsets" not in processor(text=prompt, images=[make_image()])


def test_flattened_row_of_several_requests_matches_the_model_per_request(short_ckpt):
    path, _, processor = short_ckpt
    reference = EagleVLForConditionalGeneration.from_pretrained(path).eval()
    config = AutoConfig.from_pretrained(path)
    assert type(config).__name__ == "EagleVLConfig"
    # Base._patch_config: only the text config gets vLLM's attention.
    config.get_text_config()._attn_implementation = "per_request_causal"
    base = AutoModel.from_config(config)
    assert isinstance(base, EagleVLModel)
    base.load_state_dict({k.removeprefix("model."): v for k, v in reference.state_dict().items()
                          if k.startswith("model.")})
    base.eval()
    assert type(base.get_decoder()).__name__ == "LlamaModel"

    requests = [("What is in this image?", [make_image(seed=3)]),
                ("Describe this picture.", [make_image(seed=4), make_image(seed=5)])]
    prompts = [processor.apply_chat_template(
        [{"role": "user", "content": [*([{"type": "image"}] * len(images)), {"type": "text", "text": q}]}],
        add_generation_prompt=True) for q, images in requests]
    rows, positions, pixels = [], [], []
    for prompt, (_, images) in zip(prompts, requests):
        ids, image_rows = vllm_style_prompt_ids(processor, prompt, images)
        rows.append(torch.tensor(ids))
        positions.append(torch.arange(len(ids)))
        pixels.extend(image_rows)
    flat_ids, flat_positions = torch.cat(rows), torch.cat(positions)
    # The whole step is wider than the model's limit; every request fits.
    assert flat_ids.shape[0] > config.max_sequence_length >= max(len(r) for r in rows)

    with torch.no_grad():
        # embed_multimodal: one [image_seq_length, hidden] tensor per image, from pooler_output.
        features = base.get_image_features(torch.stack(pixels), return_dict=True).pooler_output
        assert [tuple(f.shape) for f in features] == [(processor.image_seq_length, config.text_config.hidden_size)] * 3
        embeds = base.get_input_embeddings()(flat_ids.masked_fill(flat_ids == config.image_token_id, 0))
        embeds[flat_ids == config.image_token_id] = torch.cat(features)
        outputs = base(input_ids=None, inputs_embeds=embeds[None], use_cache=False, position_ids=flat_positions[None],
                       return_dict=False)
        assert isinstance(outputs, tuple)
        hidden = outputs[0][0]
        assert hidden.shape == (flat_ids.shape[0], config.text_config.hidden_size)
        logits = reference.lm_head(hidden)

        start = 0
        for prompt, (_, images), row in zip(prompts, requests, rows):
            inputs = processor(text=prompt, images=images, return_tensors="pt")
            expected = reference(**inputs).logits[0]
            got = logits[start:start + len(row)]
            assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
            start += len(row)


def test_a_row_whose_positions_exceed_the_limit_is_refused(ckpt):
    path, _, _ = ckpt
    base = EagleVLModel.from_pretrained(path).eval()
    limit = base.config.max_sequence_length
    embeds = torch.zeros(1, limit + 1, base.config.text_config.hidden_size)
    try:
        base(inputs_embeds=embeds, position_ids=torch.arange(limit + 1)[None], use_cache=False)
    except ValueError as err:
        assert "allows" in str(err)
    else:
        raise AssertionError("positions past the limit were accepted")


def test_vllm_plugin_entry_point_and_remote_code_auto_map(ckpt, tmp_path):
    (plugin,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "eagle_hf"]
    assert plugin.value == "eagle_hf.integrations.vllm:register"
    from eagle_hf.integrations import vllm as plugin_module

    assert "EagleVLForConditionalGeneration" in plugin_module.ARCHITECTURES
    assert plugin_module.BACKEND_CLASS.endswith(":TransformersMultiModalForCausalLM")
    from eagle_hf.hub import export_for_remote_code

    path, model, processor = ckpt
    export_for_remote_code(model, processor, tmp_path / "remote")
    config = AutoConfig.from_pretrained(tmp_path / "remote")
    assert config.auto_map["AutoModel"] == "modeling_eagle.EagleVLModel"
    assert AutoProcessor.from_pretrained(tmp_path / "remote") is not None

"""EagleVLModel / EagleVLForConditionalGeneration on the tiny five-expert preset (CPU)."""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    DECODER_LAYER,
    PAD_ID,
    left_pad,
    make_inputs,
    make_pixel_values,
    make_prompt,
    seeded_model,
    tiny_text_config,
)
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
from transformers.modeling_layers import GradientCheckpointingLayer

import eagle_hf
from eagle_hf import EagleVLConfig, EagleVLForConditionalGeneration, EagleVLModel, preset_config
from eagle_hf.modeling.registry import get_expert

GEN = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=PAD_ID)

EXPERT_BLOCKS = {"clip": "CLIPEncoderLayer", "convnext": "ConvNeXtBlock", "sam": "EagleSamVisionLayer",
                 "pix2struct": "Pix2StructVisionLayer", "eva": "EagleEvaBlock"}


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A saved tiny model and the logits it gives on a fixed batch."""
    path = tmp_path_factory.mktemp("tiny")
    cfg = preset_config("tiny")
    model = seeded_model(cfg)
    model.save_pretrained(path)
    inputs = make_inputs(cfg, n_images=1, batch_size=2, ragged=True)
    return path, cfg, inputs, logits_of(model, inputs), model


# --- save / load -----------------------------------------------------------------------------

def test_auto_round_trip_is_bitwise_and_safetensors_only(saved_tiny):
    path, cfg, inputs, logits, model = saved_tiny
    files = sorted(os.listdir(path))
    assert "model.safetensors" in files
    assert all(f.endswith((".safetensors", ".json")) for f in files), files

    assert type(AutoConfig.from_pretrained(path)) is EagleVLConfig
    loaded, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert type(loaded) is EagleVLForConditionalGeneration
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert torch.equal(logits_of(loaded.eval(), inputs), logits)

    base = AutoModel.from_pretrained(path).eval()
    assert type(base) is EagleVLModel
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
        expected = model.model(**inputs).last_hidden_state
    assert torch.equal(hidden, expected)

    # Weights are stored under the documented prefixes: model.vision_tower.<expert>., projector, LLM, lm_head.
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for name in cfg.vision_config.expert_order:
        assert any(k.startswith(f"model.vision_tower.{name}.") for k in keys), name
    assert "model.multi_modal_projector.linear_1.weight" in keys
    assert "model.language_model.embed_tokens.weight" in keys
    assert "lm_head.weight" in keys


def test_from_pretrained_device_map_cpu(saved_tiny):
    path, _, inputs, logits, _ = saved_tiny
    loaded = EagleVLForConditionalGeneration.from_pretrained(path, device_map="cpu").eval()
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert torch.equal(logits_of(loaded, inputs), logits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_pretrained_in_half_precision_builds_no_float32_weights(saved_tiny, dtype):
    """`from_pretrained(dtype=bf16/fp16)` builds on the meta device and materialises every parameter
    directly in that dtype (a float32 build then cast would double the peak memory), keeps the
    derived float32 tables (RoPE, normalisation constants) float32 (`.to(dtype)` would round
    them), and has the float32 model's weights cast to that dtype."""
    from torch.nn.modules.module import register_module_parameter_registration_hook

    path, _, inputs, _, fp32_model = saved_tiny
    registered = []
    hook = register_module_parameter_registration_hook(
        lambda module, name, param: registered.append((name, param.dtype, param.device.type)))
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).eval()
    finally:
        hook.remove()
    real = [(name, dt) for name, dt, device in registered if device != "meta"]
    assert real, "no parameter was materialised"
    assert {dt for _, dt in real} == {dtype}, sorted({(n, dt) for n, dt in real if dt != dtype})[:5]
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert {b.dtype for n, b in loaded.named_buffers() if "freqs_" in n or n.endswith(("image_mean", "image_std"))} \
        == {torch.float32}
    cast = EagleVLForConditionalGeneration.from_pretrained(path).to(dtype).eval()
    for (name, a), b in zip(loaded.named_parameters(), cast.parameters()):
        assert torch.equal(a, b), name
    if dtype == torch.bfloat16:  # CPU half-precision matmuls: bf16 only
        with torch.no_grad():
            ours = loaded(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)}).logits.float()
            ref = fp32_model(**inputs).logits
        assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
        assert (ours - ref).abs().max() < 0.1 * ref.abs().max()


def test_meta_device_init_creates_no_real_tensors():
    with torch.device("meta"):
        model = EagleVLForConditionalGeneration(preset_config("tiny"))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} == {"meta"}


def test_meta_device_init_full_size_x5():
    cfg = preset_config("x5")  # full-size experts, tiny LLM
    with torch.device("meta"):
        model = EagleVLForConditionalGeneration(cfg)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    # shared/reference/eagle-original.md §2.2: X5 experts 2,273,867,048 incl. ConvNeXt's unused head.
    assert vision == 2_273_867_048 - (3072 * 2 + 3072 * 1000 + 1000)
    assert model.model.multi_modal_projector.linear_1.in_features == 7680


# --- image features --------------------------------------------------------------------------

def test_pixel_values_path_equals_precomputed_features(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=2, batch_size=2, ragged=True)
    pixel_values = inputs.pop("pixel_values")
    with torch.no_grad():
        direct = tiny_model(**inputs, pixel_values=pixel_values).logits
        features = tiny_model.get_image_features(pixel_values)
        precomputed = tiny_model(**inputs, mm_encoder_outputs={"image": features}).logits
    assert len(features.pooler_output) == 4
    assert tuple(features.pooler_output[0].shape) == (tiny_config.image_seq_length, tiny_config.text_config.hidden_size)
    assert torch.equal(direct, precomputed)


def test_inputs_embeds_path_equals_input_ids_path(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=2, ragged=True)
    input_ids = inputs.pop("input_ids")
    with torch.no_grad():
        by_ids = tiny_model(input_ids=input_ids, **inputs).logits
        embeds = tiny_model.get_input_embeddings()(input_ids)
        by_embeds = tiny_model(inputs_embeds=embeds, **inputs).logits
    assert torch.equal(by_ids, by_embeds)


def test_image_features_are_scattered_in_text_order(tiny_model, tiny_config):
    """The k-th image's projected tokens land on the k-th run of placeholders."""
    inputs = make_inputs(tiny_config, n_images=2, batch_size=1)
    captured = {}
    hook = tiny_model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            out = tiny_model(**inputs)
    finally:
        hook.remove()
    positions = (inputs["input_ids"][0] == tiny_config.image_token_id).nonzero().flatten()
    n = tiny_config.image_seq_length
    for k, image in enumerate(out.image_outputs.pooler_output):
        assert torch.equal(captured["embeds"][0, positions[k * n:(k + 1) * n]], image)


def test_images_change_the_output(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=1)
    other = dict(inputs, pixel_values=make_pixel_values(tiny_config, 1, seed=7))
    assert not torch.allclose(logits_of(tiny_model, inputs), logits_of(tiny_model, other))


# --- generation ------------------------------------------------------------------------------

def test_cached_and_uncached_greedy_generation_are_identical(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=2, ragged=True)
    cached = tiny_model.generate(**inputs, use_cache=True, **GEN)
    uncached = tiny_model.generate(**inputs, use_cache=False, **GEN)
    assert cached.shape == (2, inputs["input_ids"].shape[1] + GEN["max_new_tokens"])
    assert torch.equal(cached, uncached)


def test_first_generated_token_is_the_forward_argmax(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=2, ragged=True)
    out = tiny_model.generate(**inputs, **GEN)
    expected = logits_of(tiny_model, inputs)[:, -1].argmax(-1)
    assert torch.equal(out[:, inputs["input_ids"].shape[1]], expected)


def processed_images_of_different_sizes(config) -> torch.Tensor:
    """Two random RGB images (80x50 and 36x90) through the EAGLE image processor at the model's input size."""
    processing = pytest.importorskip("eagle_hf.processing")
    from PIL import Image

    g = torch.Generator().manual_seed(11)
    images = [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
              for h, w in ((50, 80), (90, 36))]
    processor = processing.EagleImageProcessor(size=config.vision_config.image_size)
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    size = config.vision_config.image_size
    assert tuple(pixel_values.shape) == (2, 3, size, size)
    for i, image in enumerate(images):  # batching does not change an image's preprocessing
        assert torch.equal(processor(image, return_tensors="pt")["pixel_values"][0], pixel_values[i])
    return pixel_values


@pytest.mark.parametrize("images", ["tensors", "processor"])
def test_batched_left_padded_generation_equals_one_by_one(tiny_model, tiny_config, images):
    prompts = [make_prompt(tiny_config, prefix=2, seed=1), make_prompt(tiny_config, prefix=9, seed=2)]
    assert len(prompts[0]) != len(prompts[1])
    if images == "processor":
        pixel_values = processed_images_of_different_sizes(tiny_config)
    else:
        pixel_values = make_pixel_values(tiny_config, 2, seed=3)
    gen = dict(GEN, output_scores=True, return_dict_in_generate=True)

    singles = []
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        out = tiny_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  pixel_values=pixel_values[i:i + 1], **gen)
        singles.append((out.sequences[0, len(prompt):], torch.stack(out.scores)[:, 0]))

    input_ids, attention_mask = left_pad(prompts)
    assert attention_mask[0, 0] == 0  # the shorter prompt is left-padded
    batched = tiny_model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **gen)
    new_tokens = batched.sequences[:, input_ids.shape[1]:]
    scores = torch.stack(batched.scores)
    for i, (tokens, single_scores) in enumerate(singles):
        assert torch.equal(new_tokens[i], tokens), i
        torch.testing.assert_close(scores[:, i], single_scores, rtol=1e-4, atol=1e-4)
    assert not torch.equal(new_tokens[0], new_tokens[1])


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_encodes_images_once(tiny_model, tiny_config, use_cache):
    calls = []
    hook = tiny_model.model.vision_tower.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    seen_pixel_values = []
    pre = tiny_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen_pixel_values.append(kwargs.get("pixel_values") is not None), with_kwargs=True)
    try:
        inputs = make_inputs(tiny_config, n_images=1, batch_size=2, ragged=True)
        tiny_model.generate(**inputs, use_cache=use_cache, **GEN)
    finally:
        hook.remove()
        pre.remove()
    assert calls == [2]  # one encoder call, for both images
    assert len(seen_pixel_values) == GEN["max_new_tokens"]
    assert not any(seen_pixel_values)  # forward never re-receives the pixels


# --- loss ------------------------------------------------------------------------------------

def test_loss_ignores_image_and_padding_positions(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=2, ragged=True)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    labels = input_ids.clone()  # a careless collator: image and pad positions not masked
    labels[0, -1] = -100  # an explicit ignore stays ignored
    with torch.no_grad():
        out = tiny_model(**inputs, labels=labels)

    allowed = (input_ids != tiny_config.image_token_id) & (attention_mask == 1) & (labels != -100)
    shift_logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    keep = allowed[:, 1:].reshape(-1)
    manual = F.cross_entropy(shift_logits[keep].float(), shift_labels[keep])
    torch.testing.assert_close(out.loss, manual, rtol=1e-6, atol=1e-6)
    assert keep.sum() < (attention_mask[:, 1:] == 1).sum()  # something was actually masked

    image_positions = input_ids == tiny_config.image_token_id
    pad_positions = attention_mask == 0
    assert image_positions.any() and pad_positions.any()
    scrambled = labels.clone()
    scrambled[image_positions] = torch.randint(2, 100, (int(image_positions.sum()),))
    scrambled[pad_positions] = torch.randint(2, 100, (int(pad_positions.sum()),))
    with torch.no_grad():
        assert torch.equal(tiny_model(**inputs, labels=scrambled).loss, out.loss)

    text_position = (allowed[0].nonzero().flatten())[-1]
    changed = labels.clone()
    changed[0, text_position] = (labels[0, text_position] + 1) % tiny_config.image_token_id
    with torch.no_grad():
        assert not torch.equal(tiny_model(**inputs, labels=changed).loss, out.loss)


def test_loss_with_num_items_in_batch(tiny_model, tiny_config):
    """The Trainer's num_items_in_batch reaches the loss: the loss becomes sum / num_items."""
    inputs = make_inputs(tiny_config, n_images=1, batch_size=2, ragged=True)
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        mean_loss = tiny_model(**inputs, labels=labels).loss
        summed = tiny_model(**inputs, labels=labels, num_items_in_batch=torch.tensor(1)).loss
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    n_valid = int(((input_ids != tiny_config.image_token_id) & (mask == 1))[:, 1:].sum())
    torch.testing.assert_close(summed, mean_loss * n_valid, rtol=1e-5, atol=1e-5)


# --- LLM swap ------------------------------------------------------------------------------

@pytest.mark.parametrize("llm", ["qwen2", "mistral"])
def test_other_llms(llm):
    cfg = preset_config("tiny", text_config=tiny_text_config(llm))
    model = seeded_model(cfg)
    assert model.model.language_model.config.model_type == llm
    assert DECODER_LAYER[llm] in model._no_split_modules
    inputs = make_inputs(cfg, n_images=1, batch_size=2, ragged=True)
    logits = logits_of(model, inputs)
    assert tuple(logits.shape) == (*inputs["input_ids"].shape, cfg.text_config.vocab_size)
    out = model.generate(**inputs, **GEN)
    assert torch.equal(out[:, inputs["input_ids"].shape[1]], logits[:, -1].argmax(-1))
    assert torch.equal(out, model.generate(**inputs, use_cache=False, **GEN))


def test_tied_word_embeddings_follow_the_llm(tmp_path):
    cfg = preset_config("tiny", text_config=tiny_text_config("qwen2", tie_word_embeddings=True))
    assert cfg.tie_word_embeddings
    model = seeded_model(cfg)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    inputs = make_inputs(cfg, n_images=1, batch_size=1)
    model.save_pretrained(tmp_path)
    reloaded = EagleVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert torch.equal(logits_of(reloaded, inputs), logits_of(model, inputs))


# --- attention implementation ----------------------------------------------------------------

def test_attn_implementation_reaches_llm_and_experts(saved_tiny):
    path, cfg, inputs, _, _ = saved_tiny
    models = {}
    for impl in ("eager", "sdpa"):
        model = EagleVLForConditionalGeneration.from_pretrained(path, attn_implementation=impl).eval()
        vc = model.config.vision_config
        assert model.config._attn_implementation == impl
        assert model.config.text_config._attn_implementation == impl
        assert model.model.language_model.config._attn_implementation == impl
        assert vc._attn_implementation == impl
        for name in vc.expert_order:
            assert vc.expert_config(name)._attn_implementation == impl, name
            assert getattr(model.model.vision_tower, name).config._attn_implementation == impl, name
        models[impl] = model
    # Compare where there is something to attend to: fully masked (left-pad) query rows are arbitrary.
    attended = inputs["attention_mask"].bool()
    assert not attended.all()
    eager, sdpa = logits_of(models["eager"], inputs), logits_of(models["sdpa"], inputs)
    torch.testing.assert_close(eager[attended], sdpa[attended], rtol=1e-4, atol=1e-4)


# --- gradient checkpointing ------------------------------------------------------------------

def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _count_block_calls(model, block_classes):
    """Forward calls of every module inside each block (checkpointing re-runs them in backward)."""
    counts, handles = {}, []
    for name, module in model.named_modules():
        if type(module).__name__ in block_classes:
            counts[name] = 0
            for sub in module.modules():
                if sub is not module:
                    handles.append(sub.register_forward_hook(
                        lambda *_, key=name: counts.__setitem__(key, counts[key] + 1)))
    return counts, handles


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_gradient_checkpointing_same_loss_and_grads_and_reaches_every_expert(tiny_config):
    model = seeded_model(tiny_config).train()
    inputs = make_inputs(tiny_config, n_images=1, batch_size=2, ragged=True)
    blocks = set(EXPERT_BLOCKS.values()) | {"LlamaDecoderLayer"}

    counts_plain, handles = _count_block_calls(model, blocks)
    loss_plain, grads_plain = _loss_and_grads(model, inputs)
    for h in handles:
        h.remove()

    model.gradient_checkpointing_enable()
    assert model.is_activation_checkpointing
    tower = model.model.vision_tower
    assert all(stage.grad_checkpointing for stage in tower.convnext.stages)
    for name in tiny_config.vision_config.expert_order:
        layers = [m for m in getattr(tower, name).modules() if isinstance(m, GradientCheckpointingLayer)]
        assert all(m.gradient_checkpointing for m in layers), name
    counts_gc, handles = _count_block_calls(model, blocks)
    loss_gc, grads_gc = _loss_and_grads(model, inputs)
    for h in handles:
        h.remove()

    torch.testing.assert_close(loss_gc, loss_plain, rtol=1e-6, atol=1e-6)
    assert grads_gc.keys() == grads_plain.keys()
    for key in grads_plain:
        torch.testing.assert_close(grads_gc[key], grads_plain[key], rtol=1e-4, atol=1e-6, msg=key)
    # Every block of every expert (and of the LLM) was recomputed during backward.
    for block_cls in blocks:
        assert any(type(m).__name__ == block_cls for m in model.modules()), block_cls
    for key, n in counts_plain.items():
        assert n > 0, key
        assert counts_gc[key] > n, f"{key} was not checkpointed"

    model.activation_checkpointing_disable()
    assert not any(stage.grad_checkpointing for stage in tower.convnext.stages)


# --- device placement ------------------------------------------------------------------------

def test_no_split_modules_cover_every_expert_block_and_the_decoder(tiny_model, tiny_config):
    no_split = set(tiny_model._no_split_modules)
    module_types = {type(m).__name__ for m in tiny_model.modules()}
    assert "LlamaDecoderLayer" in no_split
    for name in tiny_config.vision_config.expert_order:
        expert = getattr(tiny_model.model.vision_tower, name)
        assert EXPERT_BLOCKS[name] in expert._no_split_modules, name
        assert set(expert._no_split_modules) <= no_split, name
    # every listed class is a real module of this model (no stale names)
    assert no_split <= module_types, no_split - module_types


def test_every_registered_expert_has_a_block_class():
    assert set(EXPERT_BLOCKS) <= set(eagle_hf.list_experts())
    for name, block in EXPERT_BLOCKS.items():
        assert block in get_expert(name).model_class._no_split_modules


# --- bad inputs ------------------------------------------------------------------------------

def test_more_images_than_placeholders(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=1)
    inputs["pixel_values"] = make_pixel_values(tiny_config, 2)
    with pytest.raises(ValueError, match=r"holds 16 image tokens \(1 images of 16 tokens\) but 2 images were given"):
        tiny_model(**inputs)
    with pytest.raises(ValueError, match="but 2 images were given"):
        tiny_model.generate(**inputs, **GEN)


def test_fewer_images_than_placeholders(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=3, batch_size=1)
    inputs["pixel_values"] = inputs["pixel_values"][:2]
    with pytest.raises(ValueError, match=r"holds 48 image tokens \(3 images of 16 tokens\) but 2 images were given"):
        tiny_model(**inputs)


def test_truncated_image_span(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=1)
    ids = inputs["input_ids"]
    ids[ids == tiny_config.image_token_id] = torch.tensor([tiny_config.image_token_id] * 15 + [5])
    with pytest.raises(ValueError, match=r"holds 15 image tokens .* but 1 images were given"):
        tiny_model(**inputs)


def test_images_but_no_placeholder(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=0, batch_size=1)
    inputs["pixel_values"] = make_pixel_values(tiny_config, 1)
    with pytest.raises(ValueError, match="holds 0 image tokens .* but 1 images were given"):
        tiny_model(**inputs)


def test_text_only_input_works(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=0, batch_size=2, ragged=True)
    out = tiny_model(**inputs)
    assert out.image_outputs is None
    assert tuple(out.logits.shape) == (*inputs["input_ids"].shape, tiny_config.text_config.vocab_size)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 32, 32), "pixel_values are 32x32 but this model's experts share a 64x64 input"),
        ((1, 3, 64, 48), "pixel_values are 64x48"),
        ((3, 64, 64), r"must be a \[batch, 3, 64, 64\] tensor, got \(3, 64, 64\)"),
        ((1, 1, 64, 64), r"must be a \[batch, 3, 64, 64\] tensor, got \(1, 1, 64, 64\)"),
    ],
)
def test_bad_pixel_values(tiny_model, tiny_config, shape, match):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=1)
    inputs["pixel_values"] = torch.randn(shape)
    with pytest.raises(ValueError, match=match):
        tiny_model(**inputs)


def test_ambiguous_inputs(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, n_images=1, batch_size=1)
    features = tiny_model.get_image_features(inputs["pixel_values"])
    with pytest.raises(ValueError, match="either pixel_values or precomputed mm_encoder_outputs"):
        tiny_model(**inputs, mm_encoder_outputs={"image": features})
    embeds = tiny_model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        tiny_model(**inputs, inputs_embeds=embeds)


def test_unknown_expert_in_model_config():
    with pytest.raises(ValueError, match="unknown vision expert 'nope'; known experts: "
                       + ", ".join(eagle_hf.list_experts())):
        preset_config("tiny", experts=["clip", "nope"])


def test_checkpoint_with_other_channels_fails_to_load(tmp_path):
    """A checkpoint saved with one expert mix, loaded into a config whose fused width differs:
    refused (projector shape mismatch, key and both shapes named) instead of silently re-initialising."""
    seeded_model(preset_config("tiny", experts=["clip", "sam"])).save_pretrained(tmp_path)
    other = preset_config("tiny", experts=["clip", "convnext"])
    other.vision_config.convnext_config.dims = [8, 16, 24, 40]
    with pytest.raises(ValueError, match=r"multi_modal_projector\.linear_1\.weight: checkpoint \(64, 64\) vs model "
                                         r"\(64, 72\).*ignore_mismatched_sizes"):
        EagleVLForConditionalGeneration.from_pretrained(tmp_path, config=other)


def test_checkpoint_with_other_experts_of_equal_width_is_refused(tmp_path):
    """Same fused width, different experts: transformers alone would load and leave the new
    expert randomly initialised; eagle-hf refuses and names the missing weights."""
    seeded_model(preset_config("tiny", experts=["clip", "sam"])).save_pretrained(tmp_path)
    other = preset_config("tiny", experts=["clip", "eva"])
    with pytest.raises(ValueError, match=r"does not hold all weights.*missing: model\.vision_tower\.eva\."):
        EagleVLForConditionalGeneration.from_pretrained(tmp_path, config=other)


def test_prompt_longer_than_model_maximum_is_refused(tiny_config):
    """The original truncated silently after inserting the image; eagle-hf refuses with the counts."""
    cfg = preset_config("tiny", model_max_length=20)
    model = seeded_model(cfg).eval()
    ok = make_inputs(cfg, n_images=1, prefix=1, suffix=2)  # BOS + 1 + 16 image tokens + 2 = 20 tokens
    assert model(**ok).logits.shape[1] == 20
    long = make_inputs(cfg, n_images=1, prefix=3, suffix=4)  # 24 tokens
    with pytest.raises(ValueError, match=r"24 tokens \(16 of them image tokens\).*allows 20"):
        model(**long)


def test_truncated_native_checkpoint_names_the_file(tmp_path):
    seeded_model(preset_config("tiny")).save_pretrained(tmp_path)
    (shard,) = tmp_path.glob("*.safetensors")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{shard.name}: truncated safetensors file"):
        EagleVLForConditionalGeneration.from_pretrained(tmp_path)


def test_attn_implementation_per_expert_mapping(tmp_path):
    """How flash-attention is asked for where only some experts have a kernel for it: a nested
    mapping reaches the LLM and each expert slot (checked here with eager/sdpa on the CPU)."""
    seeded_model(preset_config("tiny")).save_pretrained(tmp_path)
    mapping = {"text_config": "eager", "vision_config": {"clip_config": "eager", "": "sdpa"}}
    model = EagleVLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=mapping)
    vision = model.config.vision_config
    assert model.config.text_config._attn_implementation == "eager"
    got = {name: vision.expert_config(name)._attn_implementation for name in vision.expert_order}
    assert got == {"clip": "eager", "convnext": "sdpa", "sam": "sdpa", "pix2struct": "sdpa", "eva": "sdpa"}

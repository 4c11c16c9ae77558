"""The transformers model conventions, checked the way transformers checks its own models: a tester
that builds a tiny config and inputs, one test class per model aspect (the model contract, loading,
generation modes). Expected values are computed independently of the code under test: by hand
(embedding look-ups, log-prob sums, argmax loops) or by another public path of transformers."""

import logging

import pytest
import torch
from conftest import PAD_ID, make_inputs, make_prompt, seeded_model, tiny_text_config
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    StaticCache,
)

from eagle_hf import EagleVLForConditionalGeneration, EagleVLModel, preset_config
from eagle_hf.modeling import modeling_eagle


class EagleVLModelTester:
    """Builds the tiny configuration (all five experts, 4x4 grid, 2-layer Llama) and common inputs:
    a left-padded batch whose prompts each hold one image span."""

    def __init__(self, batch_size: int = 2, experts: list[str] | None = None, n_images: int = 1, **config_kwargs):
        self.batch_size = batch_size
        self.experts = experts
        self.n_images = n_images
        self.config_kwargs = config_kwargs

    def get_config(self):
        return preset_config("tiny", experts=self.experts, **self.config_kwargs)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        inputs = make_inputs(config, n_images=self.n_images, batch_size=self.batch_size, ragged=True)
        return config, inputs

    def create_model(self, cls=EagleVLForConditionalGeneration, config=None, seed: int = 0):
        return seeded_model(config if config is not None else self.get_config(), cls=cls, seed=seed)


ALL_MODEL_CLASSES = (EagleVLModel, EagleVLForConditionalGeneration)
GREEDY = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=PAD_ID)


@pytest.fixture(scope="module")
def tester():
    return EagleVLModelTester()


@pytest.fixture(scope="module")
def model_and_inputs(tester):
    config, inputs = tester.prepare_config_and_inputs_for_common()
    return tester.create_model(config=config), config, inputs


def first_output(model, **inputs):
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class TestEagleVLModel:
    """Forward contract shared by `EagleVLModel` and `EagleVLForConditionalGeneration`."""

    @pytest.mark.parametrize("cls", ALL_MODEL_CLASSES, ids=lambda c: c.__name__)
    def test_return_dict_false_gives_the_same_values_as_a_tuple(self, tester, cls):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(cls, config)
        labels = {"labels": inputs["input_ids"]} if cls is EagleVLForConditionalGeneration else {}
        with torch.no_grad():
            as_dict = model(**inputs, **labels, output_hidden_states=True)
            as_tuple = model(**inputs, **labels, output_hidden_states=True, return_dict=False)
        assert isinstance(as_tuple, tuple)
        expected = as_dict.to_tuple()
        assert len(as_tuple) == len(expected)
        first = as_dict.loss if labels else as_dict.last_hidden_state
        assert torch.equal(as_tuple[0], first)
        if labels:
            assert torch.equal(as_tuple[1], as_dict.logits)
        # config.return_dict=False is honoured as well (transformers' `can_return_tuple`)
        model.config.return_dict = False
        try:
            with torch.no_grad():
                from_config = model(**inputs, **labels)
        finally:
            model.config.return_dict = True
        assert isinstance(from_config, tuple) and torch.equal(from_config[0], first)

    def test_get_image_features_honours_return_dict(self, model_and_inputs):
        model, config, inputs = model_and_inputs
        with torch.no_grad():
            out = model.get_image_features(inputs["pixel_values"])
            as_tuple = model.get_image_features(inputs["pixel_values"], return_dict=False)
            model.config.return_dict = False
            try:
                from_config = model.get_image_features(inputs["pixel_values"])
            finally:
                model.config.return_dict = True
        for result in (as_tuple, from_config):
            assert isinstance(result, tuple)
            assert torch.equal(result[0], out.last_hidden_state)
            assert all(torch.equal(a, b) for a, b in zip(result[1], out.pooler_output, strict=True))

    def test_llm_hidden_states_and_attentions(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config=config)
        model.set_attn_implementation("eager")
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, output_attentions=True)
        n_layers, heads = config.text_config.num_hidden_layers, config.text_config.num_attention_heads
        batch, length = inputs["input_ids"].shape
        assert len(out.hidden_states) == n_layers + 1
        assert all(h.shape == (batch, length, config.text_config.hidden_size) for h in out.hidden_states)
        assert len(out.attentions) == n_layers
        attended = inputs["attention_mask"].bool()
        for weights in out.attentions:
            assert weights.shape == (batch, heads, length, length)
            rows = weights.transpose(1, 2)[attended]  # [real query positions, heads, keys]
            torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]))
            # causal, and padding is never attended to (fully padded query rows are arbitrary)
            future = torch.ones(length, length, dtype=torch.bool).triu(1)
            blocked = (future[None, None] | ~attended[:, None, None, :]).expand_as(weights)
            assert torch.all(weights.masked_fill(~attended[:, None, :, None], 0)[blocked] == 0)
        # The first hidden state is the LLM input: text embeddings with the image features scattered in.
        image_rows = inputs["input_ids"] == config.image_token_id
        projected = torch.cat(list(out.image_outputs.pooler_output))
        assert torch.equal(out.hidden_states[0][image_rows], projected)
        text = model.get_input_embeddings()(inputs["input_ids"])
        assert torch.equal(out.hidden_states[0][~image_rows], text[~image_rows])

    def test_image_features_hold_every_experts_hidden_states(self, model_and_inputs):
        model, config, inputs = model_and_inputs
        tower = model.model.vision_tower
        with torch.no_grad():
            out = model.get_image_features(inputs["pixel_values"], output_hidden_states=True)
            inputs_of = tower.expert_inputs(inputs["pixel_values"])
            maps = {name: tower.experts[name](x) for name, x in inputs_of.items()}
        order = config.vision_config.expert_order
        assert list(out.hidden_states) == order
        batch = inputs["pixel_values"].shape[0]
        layers = {"clip": config.vision_config.clip_config.num_layers_used,
                  "convnext": len(config.vision_config.convnext_config.dims),
                  "sam": config.vision_config.sam_config.num_hidden_layers,
                  "pix2struct": config.vision_config.pix2struct_config.num_hidden_layers,
                  "eva": config.vision_config.eva_config.num_hidden_layers}
        for name in order:
            states = out.hidden_states[name]
            assert len(states) == layers[name] + 1, name
            assert all(h.shape[0] == batch for h in states), name
        # The last recorded state is what each expert hands to the mixture (before the shared resampling).
        assert torch.equal(out.hidden_states["convnext"][-1], maps["convnext"])
        assert torch.equal(out.hidden_states["eva"][-1].permute(0, 3, 1, 2), maps["eva"])
        clip = out.hidden_states["clip"][-1]  # tiny CLIP: last layer, class token dropped, no post-norm
        assert torch.equal(clip.transpose(1, 2).reshape(maps["clip"].shape), maps["clip"])
        # ... and the first is that expert's embedding output, not the pixels: it differs between experts.
        assert out.hidden_states["sam"][0].shape[-1] == config.vision_config.sam_config.hidden_size
        # A plain forward passes the flags to the vision tower as well.
        with torch.no_grad():
            full = model(**inputs, output_hidden_states=True)
        assert list(full.image_outputs.hidden_states) == order
        assert torch.equal(full.image_outputs.hidden_states["eva"][-1], out.hidden_states["eva"][-1])
        assert out.attentions is None

    def test_set_attn_implementation_switches_every_expert_at_run_time(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config=config)
        pixel_values = inputs["pixel_values"]
        attention_experts = ["clip", "sam", "pix2struct", "eva"]
        results = {}
        for impl in ("eager", "sdpa", "eager"):
            model.set_attn_implementation(impl)
            with torch.no_grad():
                out = model.get_image_features(pixel_values, output_attentions=True)
            results[impl] = out
            assert out.attentions["convnext"] == ()
            for name in attention_experts:
                weights = out.attentions[name]
                assert len(weights) > 0, name
                if impl == "eager":  # weights are returned, and they are softmax rows
                    for w in weights:
                        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=1e-5, atol=1e-5)
                else:  # SDPA computes no weights: the switch really reached the expert's kernel
                    assert all(w is None for w in weights), name
        torch.testing.assert_close(results["sdpa"].last_hidden_state, results["eager"].last_hidden_state,
                                   rtol=1e-4, atol=1e-5)
        assert model.model.vision_tower.eva.config._attn_implementation == "eager"

    def test_image_placeholders_without_images_are_embedded_as_text_with_one_warning(self, model_and_inputs, caplog):
        model, config, inputs = model_and_inputs
        text_only = {k: v for k, v in inputs.items() if k != "pixel_values"}
        assert (text_only["input_ids"] == config.image_token_id).any()
        logging.getLogger(modeling_eagle.__name__).warning_once.cache_clear()
        with caplog.at_level(logging.WARNING, logger=modeling_eagle.__name__), torch.no_grad():
            logits = model(**text_only).logits
            again = model(**text_only).logits
        warnings = [r for r in caplog.records if "image tokens but no images" in r.getMessage()]
        assert len(warnings) == 1
        assert torch.equal(logits, again)
        # Same as feeding the placeholder's own embedding row as text.
        embeds = model.get_input_embeddings().weight[text_only["input_ids"]]
        with torch.no_grad():
            by_embeds = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        assert torch.equal(logits, by_embeds)
        with torch.no_grad():
            with_images = model(**inputs).logits
        assert not torch.allclose(logits, with_images)

    def test_placeholders_outside_the_vocabulary_embed_as_id_0(self):
        # Converted original checkpoints put <image> at vocab_size, outside the LLM's embedding table.
        config = preset_config("tiny", image_token_id=256)
        assert config.image_token_id == config.text_config.vocab_size
        model = seeded_model(config)
        ids = torch.tensor([make_prompt(config)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            expected = model(input_ids=ids.masked_fill(ids == 256, 0)).logits
        assert torch.equal(logits, expected)

    def test_custom_4d_attention_mask_equals_the_2d_mask(self, model_and_inputs):
        model, _, inputs = model_and_inputs
        mask_2d = inputs["attention_mask"].bool()
        length = mask_2d.shape[1]
        allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None, None] & mask_2d[:, None, None, :]
        mask_4d = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        with torch.no_grad():
            by_2d = model(**inputs).logits
            by_4d = model(**dict(inputs, attention_mask=mask_4d)).logits
        torch.testing.assert_close(by_4d[mask_2d], by_2d[mask_2d], rtol=1e-5, atol=1e-5)

    def test_deprecated_past_key_values_name_warns_and_is_used(self, model_and_inputs):
        model, _, inputs = model_and_inputs
        with torch.no_grad():
            prefill = model(**inputs, use_cache=True)
            step = inputs["input_ids"][:, -1:]
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(step)], dim=1)
            cache_new = DynamicCache(config=model.config)
            cache_old = DynamicCache(config=model.config)
            model(**inputs, cache=cache_new)
            model(**inputs, cache=cache_old)
            by_new = model(input_ids=step, attention_mask=mask, cache=cache_new).logits
            with pytest.warns(FutureWarning, match="past_key_values"):
                by_old = model(input_ids=step, attention_mask=mask, past_key_values=cache_old).logits
        assert prefill.cache.get_seq_length() == inputs["input_ids"].shape[1]
        assert cache_old.get_seq_length() == inputs["input_ids"].shape[1] + 1
        assert torch.equal(by_new, by_old)

    def test_tp_plan_covers_lm_head(self, model_and_inputs):
        model = model_and_inputs[0]
        plan = model.tp_plan
        assert plan["lm_head"] == "colwise_gather_output"
        # The LLM's own plan is kept, under its prefix.
        assert any(key.startswith("model.language_model.layers.") for key in plan), plan

    def test_rope_scaling_raises_the_length_limit(self):
        plain = preset_config("tiny", text_config=tiny_text_config(max_position_embeddings=32))
        scaled = preset_config("tiny", text_config=tiny_text_config(
            max_position_embeddings=32, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}))
        assert plain.max_sequence_length == 32
        assert scaled.max_sequence_length == 64
        model = seeded_model(scaled)
        inputs = make_inputs(scaled, n_images=1, prefix=20, suffix=10)  # 1 + 20 + 16 + 10 = 47 tokens
        assert 32 < inputs["input_ids"].shape[1] <= 64
        with torch.no_grad():
            assert model(**inputs).logits.shape[1] == 47
        with pytest.raises(ValueError, match="47 tokens .* allows 32"):
            seeded_model(plain)(**inputs)


class TestEagleVLLoading:
    """`from_pretrained` reporting and base-model-prefix handling."""

    def test_output_loading_info_reports_missing_weights_instead_of_raising(self, tmp_path):
        seeded_model(preset_config("tiny", experts=["clip", "sam"])).save_pretrained(tmp_path)
        other = preset_config("tiny", experts=["clip", "eva"])
        # By default a silently random-initialised expert is refused, naming it.
        with pytest.raises(ValueError, match=r"expert eva would be randomly initialised"):
            EagleVLForConditionalGeneration.from_pretrained(tmp_path, config=other)
        model, info = EagleVLForConditionalGeneration.from_pretrained(tmp_path, config=other, output_loading_info=True)
        assert isinstance(model, EagleVLForConditionalGeneration)
        assert set(info) >= {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
        missing = set(info["missing_keys"])
        expected = {f"model.vision_tower.eva.{k}" for k in model.model.vision_tower.eva.state_dict()}
        assert {k for k in missing if ".rope_" not in k} == {k for k in expected if ".rope_" not in k}
        assert {k.split(".")[2] for k in info["unexpected_keys"]} == {"sam"}

    def test_complete_checkpoint_reports_nothing(self, tmp_path):
        seeded_model(preset_config("tiny")).save_pretrained(tmp_path)
        _, info = EagleVLForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    def test_saved_base_model_loads_into_the_generation_class(self, tmp_path, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        base = tester.create_model(EagleVLModel, config)
        base.save_pretrained(tmp_path)
        model, info = EagleVLForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
        # Only the head is new (transformers initialises it and reports it); every base weight was loaded.
        assert set(info["missing_keys"]) == {"lm_head.weight"}
        assert not info["unexpected_keys"]
        for key, value in base.state_dict().items():
            assert torch.equal(model.model.state_dict()[key], value), key
        with torch.no_grad():
            assert torch.equal(model.model(**inputs).last_hidden_state, base(**inputs).last_hidden_state)
        # Without output_loading_info it loads as well: a missing head is not a missing expert.
        again = EagleVLForConditionalGeneration.from_pretrained(tmp_path)
        assert torch.equal(again.model.multi_modal_projector.linear_1.weight, base.multi_modal_projector.linear_1.weight)

    def test_generation_checkpoint_loads_into_the_base_class(self, tmp_path, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        full = tester.create_model(config=config)
        full.save_pretrained(tmp_path)
        base, info = EagleVLModel.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"]
        with torch.no_grad():
            assert torch.equal(base(**inputs).last_hidden_state, full.model(**inputs).last_hidden_state)


def log_probs_of(model, inputs, sequences, prompt_length):
    """Per-token log-probabilities of the generated part of ``sequences``, from one plain forward."""
    mask = torch.cat([inputs["attention_mask"],
                      torch.ones(sequences.shape[0], sequences.shape[1] - prompt_length, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=sequences, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    logp = logits[:, prompt_length - 1:-1].log_softmax(-1)
    return logp.gather(-1, sequences[:, prompt_length:, None])[..., 0]


def argmax_loop(model, inputs, steps):
    """Greedy decoding without cache or generate(): re-run the whole sequence, append the argmax."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


class TestEagleVLGeneration:
    """Generation modes of `GenerationMixin` on `EagleVLForConditionalGeneration`."""

    def test_greedy_equals_an_argmax_loop(self, model_and_inputs):
        model, _, inputs = model_and_inputs
        out = model.generate(**inputs, **GREEDY)
        assert torch.equal(out, argmax_loop(model, inputs, GREEDY["max_new_tokens"]))

    def test_sampling_draws_from_the_top_k_and_is_seeded(self, model_and_inputs):
        model, _, inputs = model_and_inputs
        prompt = inputs["input_ids"].shape[1]
        sample = dict(GREEDY, do_sample=True, top_k=5, temperature=1.0)
        torch.manual_seed(3)
        first = model.generate(**inputs, **sample)
        torch.manual_seed(3)
        assert torch.equal(model.generate(**inputs, **sample), first)
        assert not torch.equal(first, model.generate(**inputs, **GREEDY))
        # Every drawn token is among the 5 most likely ones at its step.
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(first[:, prompt:])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=first, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
        top5 = logits[:, prompt - 1:-1].topk(5, dim=-1).indices
        assert torch.all((top5 == first[:, prompt:, None]).any(-1))
        # top_k=1 sampling is greedy search
        assert torch.equal(model.generate(**inputs, **dict(sample, top_k=1)), model.generate(**inputs, **GREEDY))

    def test_beam_search_scores_are_the_sequence_log_probs(self, model_and_inputs):
        model, _, inputs = model_and_inputs
        prompt = inputs["input_ids"].shape[1]
        out = model.generate(**inputs, **GREEDY, num_beams=3, num_return_sequences=2, length_penalty=0.0,
                             return_dict_in_generate=True, output_scores=True)
        assert out.sequences.shape == (2 * inputs["input_ids"].shape[0], prompt + GREEDY["max_new_tokens"])
        expanded = {k: v.repeat_interleave(2, dim=0) for k, v in inputs.items() if k != "pixel_values"}
        expanded["pixel_values"] = inputs["pixel_values"].repeat_interleave(2, dim=0)
        logp = log_probs_of(model, expanded, out.sequences, prompt)
        torch.testing.assert_close(out.sequences_scores, logp.sum(-1), rtol=1e-4, atol=1e-4)
        # the best beam is at least as likely as the second one
        assert torch.all(out.sequences_scores[0::2] >= out.sequences_scores[1::2])
        # one beam is greedy search
        assert torch.equal(model.generate(**inputs, **GREEDY, num_beams=1), model.generate(**inputs, **GREEDY))

    @pytest.mark.parametrize("assistant_kind", ["eagle", "text_llm", "itself"])
    def test_assisted_decoding_gives_the_greedy_tokens(self, model_and_inputs, assistant_kind):
        """eagle-hf as the main model, and as the assistant (draft) model, which transformers runs
        without the image inputs (its placeholders are embedded as text)."""
        model, config, inputs = model_and_inputs
        if assistant_kind == "eagle":
            assistant = seeded_model(config, seed=5)
        elif assistant_kind == "text_llm":
            torch.manual_seed(5)
            assistant = AutoModelForCausalLM.from_config(LlamaConfig(**tiny_text_config())).eval()
        else:
            assistant = model
        inputs = make_inputs(config, n_images=1, batch_size=1)  # transformers: assisted decoding is batch 1
        greedy = model.generate(**inputs, **GREEDY)
        calls = []
        hook = assistant.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs), with_kwargs=True)
        try:
            assisted = model.generate(**inputs, **GREEDY, assistant_model=assistant)
        finally:
            hook.remove()
        assert calls, "the assistant was never called"
        assert not any(c.get("pixel_values") is not None for c in calls)
        assert torch.equal(assisted, greedy)

    def test_prompt_lookup_decoding_gives_the_greedy_tokens(self, model_and_inputs):
        model, config, _ = model_and_inputs
        inputs = make_inputs(config, n_images=1, batch_size=1)
        assert torch.equal(model.generate(**inputs, **GREEDY, prompt_lookup_num_tokens=3),
                           model.generate(**inputs, **GREEDY))

    def test_contrastive_search_is_not_in_transformers_5(self, model_and_inputs):
        """Not supported here: transformers 5 moved contrastive search to Hub code
        (`custom_generate=`), which needs the network and trust_remote_code."""
        model, _, inputs = model_and_inputs
        with pytest.raises(ValueError, match="Contrastive Search requires `trust_remote_code=True`"):
            model.generate(**inputs, penalty_alpha=0.6, top_k=4, max_new_tokens=3, pad_token_id=PAD_ID)

    @pytest.mark.parametrize("with_images", [False, True], ids=["text_only_continuation", "same_inputs_again"])
    def test_continuing_from_the_returned_cache(self, model_and_inputs, with_images):
        model, _, inputs = model_and_inputs
        full = model.generate(**inputs, **GREEDY)
        half = dict(GREEDY, max_new_tokens=3, min_new_tokens=3)
        first = model.generate(**inputs, **half, return_dict_in_generate=True)
        assert first.cache.get_seq_length() == first.sequences.shape[1] - 1
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(first.sequences[:, :3])], dim=1)
        more = {"pixel_values": inputs["pixel_values"]} if with_images else {}
        second = model.generate(input_ids=first.sequences, attention_mask=mask, cache=first.cache, **more, **half)
        assert torch.equal(second, full)

    @pytest.mark.slow
    def test_static_cache_decoding_under_torch_compile_fullgraph_equals_eager(self, model_and_inputs):
        """Slow (about 2 min of compilation on 2 CPU cores). The decode step compiles as one graph."""
        model, config, inputs = model_and_inputs
        assert model._can_compile_fullgraph
        prompt, steps = inputs["input_ids"].shape[1], 4

        def decode(forward):
            cache = StaticCache(config=config, max_cache_len=prompt + steps)
            with torch.no_grad():
                token = model(**inputs, cache=cache).logits[:, -1:].argmax(-1)
                tokens, mask = [token], inputs["attention_mask"]
                for _ in range(steps - 1):
                    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                    out = forward(input_ids=token, attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                                  cache=cache)
                    token = out.logits[:, -1:].argmax(-1)
                    tokens.append(token)
            return torch.cat(tokens, dim=1)

        eager = decode(model.forward)
        assert torch.equal(eager, model.generate(**inputs, **dict(GREEDY, max_new_tokens=steps, min_new_tokens=steps))
                           [:, prompt:])
        torch._dynamo.reset()
        compiled = decode(torch.compile(model.forward, fullgraph=True))
        assert torch.equal(compiled, eager)

    def test_generate_returns_per_step_scores_attentions_and_hidden_states(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = tester.create_model(config=config)
        model.set_attn_implementation("eager")
        out = model.generate(**inputs, **GREEDY, return_dict_in_generate=True, output_scores=True,
                             output_attentions=True, output_hidden_states=True)
        steps, prompt = GREEDY["max_new_tokens"], inputs["input_ids"].shape[1]
        assert len(out.scores) == len(out.attentions) == len(out.hidden_states) == steps
        layers = config.text_config.num_hidden_layers
        assert len(out.attentions[0]) == layers and out.attentions[0][0].shape[-2:] == (prompt, prompt)
        assert out.attentions[1][0].shape[-2:] == (1, prompt + 1)  # cached step: one query row
        assert len(out.hidden_states[0]) == layers + 1
        # each step's scores pick that step's token (greedy)
        assert torch.equal(torch.stack(out.scores, 1).argmax(-1), out.sequences[:, prompt:])

    def test_generate_from_inputs_embeds_equals_input_ids(self, model_and_inputs):
        model, config, inputs = model_and_inputs
        text = make_inputs(config, n_images=0, batch_size=2, ragged=True)
        embeds = model.get_input_embeddings()(text["input_ids"])
        by_embeds = model.generate(inputs_embeds=embeds, attention_mask=text["attention_mask"], **GREEDY)
        by_ids = model.generate(**text, **GREEDY)
        assert torch.equal(by_embeds, by_ids[:, text["input_ids"].shape[1]:])  # only new tokens come back

    def test_static_cache_equals_dynamic_cache(self, model_and_inputs):
        model, _, inputs = model_and_inputs
        static = model.generate(**inputs, **GREEDY, cache_implementation="static", return_dict_in_generate=True)
        assert isinstance(static.cache, StaticCache)
        assert torch.equal(static.sequences, model.generate(**inputs, **GREEDY))

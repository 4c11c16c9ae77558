"""The original EAGLE conversation templates: Python renderer and generated Jinja template against the
prompt strings rendered by the original ``eagle/conversation.py`` (``/work/shared/parity/prompts.json``)."""

import json
from pathlib import Path

import jinja2
import pytest
from tokenizers import AddedToken, Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

from eagle_hf.testing.parity import find_parity_dir
from eagle_hf.processing import (
    TEMPLATE_ALIASES,
    TEMPLATES,
    EagleImageProcessor,
    EagleProcessor,
    assistant_spans,
    get_template,
    jinja_chat_template,
    list_templates,
    render,
    render_with_spans,
)


PROMPTS_PATH = (find_parity_dir() or Path('shared/parity')) / "prompts.json"
pytestmark = pytest.mark.skipif(not PROMPTS_PATH.exists(), reason="parity prompts.json not available")
PROMPTS = json.loads(PROMPTS_PATH.read_text()) if PROMPTS_PATH.exists() else {"templates": {}, "questions": {}}
Q = PROMPTS["questions"]

# The closing separator that the original training kept in the loss after each answer.
CLOSING = {
    "vicuna_v1": "</s>", "v1": "</s>", "llava_v1": "</s>",
    "llama3": "<|eot_id|>",
    "yi_34b_chatml_direct": "<|im_end|>", "chatml_direct": "<|im_end|>", "mistral_direct": "<|im_end|>",
    "mpt": "<|im_end|>",
    "llava_v0": "###",
    "plain": "\n", "v0_plain": "\n",
}


def one_turn():
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q["q1"]}]}]


def two_turns():
    return one_turn() + [
        {"role": "assistant", "content": Q["a1"]},
        {"role": "user", "content": [{"type": "text", "text": Q["q2"]}]},
    ]


def with_answer():
    return one_turn() + [{"role": "assistant", "content": [{"type": "text", "text": Q["a1"]}]}]


CASES = [
    ("one_turn_image_prompt", one_turn, True),
    ("two_turn_image_prompt", two_turns, True),
    ("one_turn_image_with_answer", with_answer, False),
]


def jinja_render(name, messages, add_generation_prompt):
    (text,), (indices,) = render_jinja_template(
        conversations=[messages],
        chat_template=jinja_chat_template(name),
        add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=True,
    )
    return text, [tuple(span) for span in indices]


def tiny_tokenizer():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({chr(i): i + 3 for i in range(256)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens([AddedToken(t, special=True) for t in ["<unk>", "<s>", "</s>"]])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def test_every_required_template_is_available():
    for name in ["vicuna_v1", "v1", "llava_v1", "llama3", "yi_34b_chatml_direct", "chatml_direct",
                 "mistral_direct", "plain", "v0_plain"]:
        assert name in list_templates()
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_template("no_such_template")


@pytest.mark.parametrize("name", list_templates())
def test_template_data_matches_original(name):
    ref = PROMPTS["templates"][name]
    t = get_template(name)
    assert t.system == ref["system"]
    assert list(t.roles) == ref["roles"]
    assert t.sep_style == ref["sep_style"]
    assert t.sep == ref["sep"]
    assert t.sep2 == ref["sep2"]
    assert t.stop_str == ref["stop_str"]
    assert ref["offset"] == 0 and ref["preset_messages"] == []
    if ref["version"] != "Unknown":
        assert t.version == ref["version"]


def test_aliases_match_original_registry():
    for alias, target in TEMPLATE_ALIASES.items():
        assert target in PROMPTS["aliases"][alias]
        assert get_template(alias) is TEMPLATES[target]


@pytest.mark.parametrize("name", list_templates())
@pytest.mark.parametrize("key,messages,gen", CASES, ids=[c[0] for c in CASES])
def test_python_and_jinja_match_original_prompts(name, key, messages, gen):
    expected = PROMPTS["templates"][name][key]
    python_text, python_spans = render_with_spans(name, messages(), add_generation_prompt=gen)
    jinja_text, jinja_spans = jinja_render(name, messages(), gen)
    assert python_text == jinja_text
    assert python_spans == jinja_spans
    if isinstance(expected, str):
        assert python_text == expected
    else:
        # The original raises for PLAIN with an answer; the stage-1 training form is rendered instead.
        assert get_template(name).sep_style == "PLAIN"
        assert "TypeError" in expected["error"]
        assert python_text.startswith("<image>" + Q["a1"] + "\n")
        if key == "one_turn_image_with_answer":
            assert python_text == "<image>" + Q["a1"] + "\n"
        else:
            assert python_text == "<image>" + Q["a1"] + "\n" + Q["q2"] + "\n"


@pytest.mark.parametrize("name", list_templates())
def test_assistant_spans_cover_answer_and_closing_separator(name):
    text, spans = render_with_spans(name, with_answer())
    assert [text[s:e] for s, e in spans] == [Q["a1"] + CLOSING[name]]
    assert text.endswith(Q["a1"] + CLOSING[name])

    messages = two_turns() + [{"role": "assistant", "content": "Red."}]
    text, spans = render_with_spans(name, messages)
    assert [text[s:e] for s, e in spans] == [Q["a1"] + CLOSING[name], "Red." + CLOSING[name]]
    assert assistant_spans(name, messages) == spans
    assert jinja_render(name, messages, False) == (text, spans)


@pytest.mark.parametrize("name", ["vicuna_v1", "llama3", "yi_34b_chatml_direct", "plain", "llava_v1"])
def test_processor_apply_chat_template_renders_the_same(name):
    processor = EagleProcessor(EagleImageProcessor(size=8), tiny_tokenizer(), template_name=name, image_seq_length=2)
    for key, messages, gen in CASES:
        text = processor.apply_chat_template(messages(), add_generation_prompt=gen, tokenize=False)
        # This tokenizer adds a BOS itself, so the processor's template starts with its string (what TRL's
        # add_special_tokens=False tokenisation needs); the original prompt follows it byte for byte.
        assert text == render(name, messages(), add_generation_prompt=gen, bos_token="<s>")
        expected = PROMPTS["templates"][name][key]
        if isinstance(expected, str):
            assert text == "<s>" + expected


def test_system_message_replaces_default_system_text_only():
    messages = [{"role": "system", "content": "Be brief."}] + one_turn()
    assert render("vicuna_v1", messages, True) == "Be brief. USER: <image>\n" + Q["q1"] + " ASSISTANT:"
    llama = render("llama3", messages, True)
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    yi = render("yi_34b_chatml_direct", [{"role": "system", "content": [{"type": "text", "text": "X"}]}] + one_turn())
    assert yi.startswith("<|im_start|>system\nX<|im_end|><|im_start|>user\n<image>\n")
    for name in ["vicuna_v1", "llama3", "yi_34b_chatml_direct", "plain"]:
        assert jinja_render(name, messages, True)[0] == render(name, messages, True)


def test_images_go_in_front_of_the_text_in_order():
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": "these."}, {"type": "image"},
    ]}]
    expected = "<|im_start|>user\n<image>\n<image>\nCompare these.<|im_end|><|im_start|>assistant\n"
    assert render("yi_34b_chatml_direct", messages, True).endswith(expected)
    assert jinja_render("yi_34b_chatml_direct", messages, True)[0].endswith(expected)
    assert render("plain", messages + [{"role": "assistant", "content": "cap"}]) == "<image><image>cap\n"
    assert render("vicuna_v1", messages, True, image_token="<img>").count("<img>\n") == 2
    assert jinja_chat_template("vicuna_v1", image_token="<img>").count("<img>") == 2


def test_roles_must_alternate():
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match="alternating"):
        render("vicuna_v1", bad)
    with pytest.raises(jinja2.exceptions.TemplateError, match="alternating"):
        jinja_render("vicuna_v1", bad, False)
    with pytest.raises(ValueError, match="alternating"):
        render("llama3", [{"role": "assistant", "content": "a"}])
    with pytest.raises(ValueError, match="'image' and 'text'"):
        render("llama3", [{"role": "user", "content": [{"type": "video"}]}])

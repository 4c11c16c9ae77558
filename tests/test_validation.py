"""Bad input gets a clear error naming the argument, file, key or value and the fix; legitimate
input that used to come out wrong gets the right result. One test per case (issue 13)."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import PAD_ID, left_pad, make_inputs, make_pixel_values, make_prompt, seeded_model, tiny_text_config
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from safetensors.torch import load_file, save_file

from eagle_hf import EagleVLConfig, EagleVLForConditionalGeneration, cli, preset_config
from eagle_hf.inference import load_model_and_processor
from eagle_hf.modeling.expert_sam import EagleSamExpertConfig
from eagle_hf.processing import EagleImageProcessor, render
from eagle_hf.testing import build_tiny_processor
from eagle_hf.training.data import build_dataset

GEN = dict(do_sample=False, pad_token_id=PAD_ID)


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# --- silently wrong before ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_pixel_values_are_refused(tiny_model, tiny_config, dtype):
    inputs = make_inputs(tiny_config)
    inputs["pixel_values"] = torch.randint(0, 256, inputs["pixel_values"].shape).to(dtype)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(ValueError, match=rf"pixel_values are {name}: raw 0\.\.255 pixels\?.*processor"):
        tiny_model(**inputs)


def test_raw_float_pixel_values_are_refused(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config)
    inputs["pixel_values"] = torch.randint(0, 256, inputs["pixel_values"].shape).float()
    with pytest.raises(ValueError, match=r"pixel_values range over \[0, 255\].*raw 0\.\.255 pixels\?"):
        tiny_model(**inputs)


def test_nan_pixel_values_are_refused(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config, batch_size=3)
    inputs["pixel_values"][1, 0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"pixel_values of image\(s\) \[1\] contain NaN or infinite values"):
        tiny_model(**inputs)
    inputs["pixel_values"][1, 0, 5, 7] = float("inf")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] contain NaN or infinite"):
        tiny_model.generate(**inputs, max_new_tokens=2, **GEN)


def test_image_span_split_across_two_rows_is_refused(tiny_model, tiny_config):
    """16 image tokens for one image, 8 at the end of row 0 and 8 at the start of row 1: the total
    matches one image, but each row would get half of its features."""
    half = tiny_config.image_seq_length // 2
    token = tiny_config.image_token_id
    ids = torch.tensor([[1, 5, 6, 7] + [token] * half, [token] * half + [8, 9, 10, 11]])
    with pytest.raises(ValueError, match=rf"row 0 of input_ids has a run of {half} image tokens at positions 4\.\.11, "
                                         rf"not a whole number of images of {2 * half} tokens.*per row: \[{half}, {half}\]"):
        tiny_model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=make_pixel_values(tiny_config, 1))


def test_attention_mask_shorter_than_input_ids_is_refused(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config)
    length = inputs["input_ids"].shape[1]
    inputs["attention_mask"] = inputs["attention_mask"][:, :5]
    with pytest.raises(ValueError, match=rf"attention_mask has shape \(1, 5\) but the input is 1 x {length} tokens"):
        tiny_model(**inputs)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 5\)"):
        tiny_model.generate(**inputs, max_new_tokens=2, **GEN)


def _long_prompt(config, length):
    prompt = make_prompt(config, n_images=1)
    prompt += [7] * (length - len(prompt))
    ids = torch.tensor([prompt])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=make_pixel_values(config, 1))


def test_generate_past_max_position_embeddings_is_refused_before_generating(tiny_model, tiny_config):
    """The issue's case: a 496-token prompt + 60 new tokens on 512 positions."""
    inputs = _long_prompt(tiny_config, 496)
    calls = []
    hook = tiny_model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"generate would reach 556 tokens \(496-token prompt \+ 60 new, "
                                             r"max_new_tokens=60\) but this model has 512 positions "
                                             r"\(text_config\.max_position_embeddings=512\); pass max_new_tokens <= 16"):
            tiny_model.generate(**inputs, max_new_tokens=60, **GEN)
    finally:
        hook.remove()
    assert calls == []  # refused before any forward pass
    out = tiny_model.generate(**inputs, max_new_tokens=16, min_new_tokens=16, **GEN)  # exactly fills the positions
    assert out.shape[1] == 512


def test_generate_without_max_new_tokens_stops_at_the_positions(tiny_model, tiny_config):
    """transformers' default (max_length 20 + prompt) is clamped to the positions, not refused."""
    inputs = _long_prompt(tiny_config, 500)
    out = tiny_model.generate(**inputs, min_new_tokens=1, **GEN)
    assert out.shape[1] == 512


def test_generation_limit_follows_rope_scaling():
    linear = preset_config("tiny", text_config=tiny_text_config(rope_scaling={"rope_type": "linear", "factor": 2.0}))
    assert linear.position_limit[0] == 1024 and "rope factor 2" in linear.position_limit[1]
    assert linear.max_sequence_length == 1024
    model = seeded_model(linear)
    out = model.generate(**_long_prompt(linear, 496), max_new_tokens=60, min_new_tokens=60, **GEN)
    assert out.shape[1] == 556  # past 512 positions: allowed by the scaling
    with pytest.raises(ValueError, match=r"1024 positions \(512 x rope factor 2 \(linear; "
                                         r"text_config\.max_position_embeddings=512\)\)"):
        model.generate(**_long_prompt(linear, 1000), max_new_tokens=60, **GEN)
    # Llama-3.1 style: max_position_embeddings already is the stretched length.
    llama3 = preset_config("tiny", text_config=tiny_text_config(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0}))
    assert llama3.position_limit[0] == 512


def test_changed_expert_order_is_refused_on_load(tmp_path):
    """Experts load by name, so a swapped expert_order would load with the projector's input
    channels permuted; the trained layout is saved and checked."""
    seeded_model(preset_config("tiny", experts=["clip", "sam"])).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["projector_expert_order"] == ["clip", "sam"]
    assert EagleVLForConditionalGeneration.from_pretrained(tmp_path).config.vision_config.expert_order == ["clip", "sam"]
    config["vision_config"]["expert_order"] = ["sam", "clip"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"expert_order \['sam', 'clip'\] differs from the order the projector was "
                                         r"trained on, projector_expert_order \['clip', 'sam'\].*Restore expert_order"):
        EagleVLForConditionalGeneration.from_pretrained(tmp_path)


def test_pil_mode_f_image_in_unit_range_reads_like_uint8():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 52), dtype=np.uint8)
    processor = EagleImageProcessor(size=32)
    as_float = Image.fromarray(grey.astype(np.float32) / 255, mode="F")
    expected = processor(Image.fromarray(grey, mode="L"), return_tensors="pt")["pixel_values"]
    got = processor(as_float, return_tensors="pt")["pixel_values"]
    assert torch.equal(got, expected)
    assert got.std() > 0.5  # not the near-black image Pillow's own conversion gave
    with pytest.raises(ValueError, match=r"PIL image of mode 'F': float images must have values in \[0, 1\]; got "
                                         r"values in \[0, 255\].*image\.convert\('L'\)"):
        processor(Image.fromarray(grey.astype(np.float32), mode="F"))


def test_named_chat_template_is_resolved(tiny_config):
    processor = build_tiny_processor(tiny_config)  # its own template is vicuna_v1
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    got = processor.apply_chat_template(messages, chat_template="llama3", add_generation_prompt=True, tokenize=False)
    assert got == render("llama3", messages, add_generation_prompt=True, image_token=processor.image_token)
    assert got != processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with pytest.raises(ValueError, match=r"chat_template='llama4' is neither a Jinja template nor a known "
                                         r"conversation template name; known names: .*llama3"):
        processor.apply_chat_template(messages, chat_template="llama4", tokenize=False)


# --- errors that did not say what was wrong -------------------------------------------------------

def test_empty_text_gives_integer_ids_and_a_clear_model_error(tiny_model, tiny_config):
    processor = build_tiny_processor(tiny_config)
    out = processor(text="", return_tensors="pt")
    assert out["input_ids"].dtype == torch.int64 and out["attention_mask"].dtype == torch.int64
    assert out["input_ids"].shape == (1, 0)
    assert processor(text=["", "a b"], padding=True, return_tensors="np")["input_ids"].dtype == np.int64
    with pytest.raises(ValueError, match=r"input_ids are empty \(0 tokens\): give the model a prompt"):
        tiny_model(**out)
    with pytest.raises(ValueError, match=r"input_ids are empty \(0 tokens\)"):
        tiny_model.generate(**out, max_new_tokens=3, **GEN)


@pytest.mark.parametrize("bad", [256, -100, -1])
def test_out_of_vocabulary_input_ids_are_refused(tiny_model, tiny_config, bad):
    inputs = make_inputs(tiny_config)
    inputs["input_ids"][0, 2] = bad
    hint = r" \(-100 belongs in labels" if bad == -100 else ""
    with pytest.raises(ValueError, match=rf"input_ids hold token id {bad}, outside the language model's vocabulary of "
                                         rf"256 ids \(0\.\.255\){hint}"):
        tiny_model(**inputs)


def test_labels_of_another_length_are_refused(tiny_model, tiny_config):
    inputs = make_inputs(tiny_config)
    length = inputs["input_ids"].shape[1]
    labels = inputs["input_ids"][:, :-3].clone()
    with pytest.raises(ValueError, match=rf"labels have shape \(1, {length - 3}\) but input_ids have shape "
                                         rf"\(1, {length}\); labels need one entry per input token"):
        tiny_model(**inputs, labels=labels)


def test_pixel_values_on_another_device_are_refused(tiny_config):
    """The experts on one device (here the meta device: no accelerator needed), pixels on another."""
    with torch.device("meta"):
        model = EagleVLForConditionalGeneration(tiny_config)
    pixels = make_pixel_values(tiny_config, 1)
    with pytest.raises(ValueError, match=r"pixel_values are on cpu but the vision experts are on meta; move them "
                                         r"with pixel_values\.to\('meta'\)"):
        model.get_image_features(pixels)


def test_sam_input_size_not_a_multiple_of_its_patch_is_refused_by_the_config():
    with pytest.raises(StrictDataclassClassValidationError,
                       match=r"sam_config\.image_size=60 must be a multiple of patch_size \(8\) times pixel_unshuffle "
                             r"\(2\), i\.e\. of 16; e\.g\. image_size=64"):
        EagleSamExpertConfig(image_size=60, patch_size=8)
    vision = preset_config("tiny").vision_config.to_dict()
    vision["sam_config"]["image_size"] = 72
    with pytest.raises(StrictDataclassClassValidationError, match=r"sam_config\.image_size=72 must be a multiple"):
        EagleVLConfig(vision_config=vision, text_config=tiny_text_config())


@pytest.mark.parametrize("where, field, value", [
    ("vision_config.clip_config", "hidden_size", -32),
    ("vision_config.convnext_config", "dims", [8, -16, 24, 32]),
    ("text_config", "hidden_size", -64),
    ("text_config", "vocab_size", 0),
])
def test_non_positive_sizes_are_refused_by_the_config(where, field, value):
    config = preset_config("tiny").to_dict()
    target = config
    for part in where.split("."):
        target = target[part]
    target[field] = value
    with pytest.raises(StrictDataclassClassValidationError,
                       match=rf"{re.escape(where)}\.{field} must be positive, got {re.escape(str(value))}"):
        EagleVLConfig(**{k: config[k] for k in ("vision_config", "text_config")})


def _saved_tiny(tmp_path, experts=None):
    seeded_model(preset_config("tiny", experts=experts)).save_pretrained(tmp_path)
    return tmp_path


def test_checkpoint_tensor_of_the_wrong_shape_names_key_and_shapes(tmp_path):
    path = _saved_tiny(tmp_path)
    tensors = load_file(path / "model.safetensors")
    key = "model.multi_modal_projector.linear_2.weight"
    tensors[key] = tensors[key][:, :40].contiguous()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{re.escape(key)}: checkpoint \(64, 40\) vs model \(64, 64\).*"
                                         r"ignore_mismatched_sizes=True"):
        EagleVLForConditionalGeneration.from_pretrained(path)


def test_weights_of_an_expert_the_config_no_longer_lists_are_named(tmp_path):
    path = _saved_tiny(tmp_path, experts=["clip", "sam"])
    config = json.loads((path / "config.json").read_text())
    config["vision_config"]["expert_order"] = ["clip"]
    config["vision_config"].pop("sam_config")
    config.pop("projector_expert_order")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"linear_1\.weight: checkpoint \(64, 64\) vs model \(64, 32\); it holds "
                                         r"weights of expert\(s\) 'sam' \(\d+ tensors\) that vision_config\.expert_order "
                                         r"\['clip'\] does not list"):
        EagleVLForConditionalGeneration.from_pretrained(path)


def test_chat_does_not_silence_the_shape_report(ckpt, tmp_path, capsys):
    path = tmp_path / "model"
    shutil.copytree(ckpt[0], path)
    tensors = load_file(path / "model.safetensors")
    key = "lm_head.weight"
    tensors[key] = tensors[key][:100].contiguous()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    rc, out, err = run_cli(["chat", "--model", str(path), "--prompt", "hi", "--device", "cpu"], capsys)
    assert rc == 2 and out == ""
    assert re.search(r"error: .*lm_head\.weight: checkpoint \(100, 64\) vs model \(256, 64\)", err), err


def _copy_with_json_edit(source, tmp_path, name, **changes):
    """A copy of the checkpoint folder ``source`` whose JSON file ``name`` has ``changes`` applied."""
    path = tmp_path / "model"
    shutil.copytree(source, path)
    data = json.loads((path / name).read_text())
    (path / name).write_text(json.dumps({**data, **changes}))
    return path


def test_processor_with_another_image_token_count_is_named(ckpt, tmp_path):
    path = _copy_with_json_edit(ckpt[0], tmp_path, "processor_config.json", image_seq_length=9)
    with pytest.raises(ValueError, match=r"inserts 9 image tokens per image \(image_seq_length\) but the model's vision "
                                         r"grid makes 16 \(vision_config\.grid_size=4, 4x4\); build the processor "
                                         r"with image_seq_length=16"):
        load_model_and_processor(path, "cpu", "float32")


def test_model_names_a_processor_image_token_count_mismatch(tiny_model, tiny_config):
    prompt = [1, 5, 6] + [tiny_config.image_token_id] * 9 + [7, 8]
    ids, mask = left_pad([prompt, prompt])
    with pytest.raises(ValueError, match=r"holds 18 image tokens .* but 2 images were given.*the text has 9 image "
                                         r"tokens per image but this model's vision grid makes 16.*image_seq_length=16"):
        tiny_model(input_ids=ids, attention_mask=mask, pixel_values=make_pixel_values(tiny_config, 2))


def test_processor_with_another_image_token_id_is_named(ckpt, tmp_path):
    path = _copy_with_json_edit(ckpt[0], tmp_path, "config.json", image_token_index=254)
    with pytest.raises(ValueError, match=r"writes images as token id 255 \('<image>'\) but the model's "
                                         r"config\.image_token_id is 254"):
        load_model_and_processor(path, "cpu", "float32")


def test_model_names_an_image_token_id_mismatch(tiny_model, tiny_config):
    prompt = [1, 5, 6] + [9] * tiny_config.image_seq_length + [7, 8]  # token 9 where 255 belongs
    ids = torch.tensor([prompt])
    with pytest.raises(ValueError, match=r"holds 0 image tokens .*16 copies of token id 9.*image_token_id seems to be "
                                         r"9 but the model's config\.image_token_id is 255"):
        tiny_model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=make_pixel_values(tiny_config, 1))


def test_eval_on_a_missing_model_folder(tmp_path, capsys):
    data = tmp_path / "test.json"
    data.write_text("[]")
    rc, out, err = run_cli(["eval", "--model", str(tmp_path / "no-such-model"), "--data", str(data)], capsys)
    assert rc == 2
    assert f"eagle-hf eval: error: model folder {tmp_path / 'no-such-model'} does not exist" in err


def test_malformed_json_data_names_the_file(tmp_path):
    bad = tmp_path / "rows.json"
    bad.write_text('[{"id": 1, "conversations": []},\n {"id": 2,}]')
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))} is not valid JSON \(line 2, column 11"):
        build_dataset(str(bad))
    with pytest.raises(FileNotFoundError, match=rf"data file {re.escape(str(tmp_path / 'missing.json'))} does not exist"):
        build_dataset(str(tmp_path / "missing.json"))


def test_eval_cli_names_the_malformed_data_file(ckpt, tmp_path, capsys):
    bad = tmp_path / "test.jsonl"
    bad.write_bytes(b'{"id": 1}\n\xff\xfe not text\n')
    rc, out, err = run_cli(["eval", "--model", str(ckpt[0]), "--data", str(bad), "--device", "cpu", "--no-progress"],
                           capsys)
    assert rc == 2
    assert f"error: {bad} is not UTF-8 text" in err


def test_train_cli_names_the_malformed_data_file(tmp_path, capsys):
    bad = tmp_path / "train.json"
    bad.write_text('[{"id": 1, "conversations": [}]')
    rc, out, err = run_cli(["train", "--data", str(bad), "--model", "tiny", "--output-dir", str(tmp_path / "out"),
                            "--max-steps", "1"], capsys)
    assert rc == 2
    assert f"eagle-hf train: error: {bad} is not valid JSON (line 1, column 30: Expecting value)" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

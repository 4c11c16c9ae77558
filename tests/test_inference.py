"""Inference paths a user takes: generate, streaming, batching, the image-text-to-text pipeline
and the chat CLI, all on a tiny offline checkpoint; answers are compared token for token."""

import io
import json
import shutil
import sys

import pytest
import torch

from eagle_hf import cli
from eagle_hf.inference import (
    ChatEngine,
    ContextLengthError,
    Conversation,
    GenerationSettings,
    check_model_folder,
    fit_new_tokens,
    generate_batch,
    load_image,
    load_model_and_processor,
    prepare_inputs,
    resolve_device,
    resolve_dtype,
    stream_generate,
)
from eagle_hf.testing import build_tiny_checkpoint, make_image

QUESTION = "What is in the image?"


@pytest.fixture(scope="module")
def small_context_ckpt(tmp_path_factory):
    """A checkpoint whose context (64 tokens) holds one image turn but not two."""
    path = tmp_path_factory.mktemp("tiny-eagle-ctx64")
    build_tiny_checkpoint(path, max_position_embeddings=64, max_new_tokens=12)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, (w, h, seed) in {"wide.png": (80, 40, 1), "tall.jpg": (30, 100, 2), "square.png": (64, 64, 3)}.items():
        paths[name] = folder / name
        make_image(w, h, seed).save(paths[name])
    paths["copy_of_wide.bmp"] = folder / "copy_of_wide.bmp"
    make_image(80, 40, 1).save(paths["copy_of_wide.bmp"])  # same pixels, other name and format
    paths["bad.png"] = folder / "bad.png"
    paths["bad.png"].write_bytes(b"this is not an image")
    paths["truncated.png"] = folder / "truncated.png"
    paths["truncated.png"].write_bytes(paths["square.png"].read_bytes()[:120])
    return paths


def chat(image, text=QUESTION):
    content = [] if image is None else [{"type": "image", "image": load_image(image)}]
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


def greedy_answer(model, processor, messages, max_new_tokens=12):
    """Reference: plain model.generate + decode of the new tokens."""
    inputs = prepare_inputs(model, processor, messages)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    return new, processor.decode(new, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------
# device, dtype, folders, images


def test_device_and_dtype_choice():
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        resolve_dtype("int4", torch.device("cpu"))


def test_one_dtype_table():
    """Chat, convert, lmms-eval and the benchmarks all read dtype names through eagle_hf.dtypes."""
    from eagle_hf.dtypes import DTYPE_CHOICES, DTYPE_NAMES, parse_dtype

    expected = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    assert {name: parse_dtype(name) for name in DTYPE_NAMES} == expected
    assert parse_dtype("torch.bfloat16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    assert parse_dtype(None) is None
    assert set(DTYPE_CHOICES) == {str(d).removeprefix("torch.") for d in expected.values()}
    for name in DTYPE_NAMES:
        assert resolve_dtype(name, torch.device("cpu")) is parse_dtype(name)
    with pytest.raises(ValueError, match=r"unknown dtype 'float8' \(use float32, bfloat16, float16; aliases: fp32"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_model_folder_checks(tmp_path, ckpt):
    assert check_model_folder(ckpt[0]) == "eagle_vl"
    with pytest.raises(FileNotFoundError, match="model folder .*missing does not exist"):
        check_model_folder(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        check_model_folder(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="has no config.json"):
        check_model_folder(tmp_path)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="holds a 'bert' model, not an eagle-hf"):
        check_model_folder(bert)
    original = tmp_path / "original"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "eagle_llama"}))
    assert check_model_folder(original) == "eagle_llama"
    assert check_model_folder("NVEagle/Eagle-X5-7B") == ""  # Hub ids are left to transformers


def test_image_loading_errors(images):
    assert load_image(images["wide.png"]).size == (80, 40)
    with pytest.raises(FileNotFoundError, match="image .*nope.png does not exist"):
        load_image(images["wide.png"].parent / "nope.png")
    with pytest.raises(ValueError, match="bad.png is not an image file that can be read"):
        load_image(images["bad.png"])
    with pytest.raises(ValueError, match="truncated.png could not be read as an image"):
        load_image(images["truncated.png"])
    with pytest.raises(ValueError, match="upload.png is not an image file"):
        load_image(images["bad.png"], name="upload.png")
    with pytest.raises(ValueError, match="is a folder"):
        load_image(images["wide.png"].parent)


def test_conversation_refuses_an_image_given_twice(images):
    conv = Conversation()
    conv.add_image(images["wide.png"])
    with pytest.raises(ValueError, match="copy_of_wide.bmp is already part of this conversation"):
        conv.add_image(images["copy_of_wide.bmp"])
    conv.add_image(images["tall.jpg"])
    assert conv.num_images == 2
    conv.reset()
    conv.add_image(images["copy_of_wide.bmp"])  # a new conversation may use it again
    assert conv.num_images == 1
    with pytest.raises(ValueError, match="the prompt is empty"):
        conv.user_message("   ")


def test_generation_settings():
    class Model:
        generation_config = type("G", (), {"max_new_tokens": 7})()

    assert GenerationSettings().generate_kwargs(Model) == {"max_new_tokens": 7}
    assert GenerationSettings(temperature=0).generate_kwargs(Model) == {
        "max_new_tokens": 7, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    assert GenerationSettings(max_new_tokens=3, temperature=0.7, top_p=0.9).generate_kwargs(Model) == {
        "max_new_tokens": 3, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    for bad, match in [({"max_new_tokens": 0}, "at least 1"), ({"temperature": -1}, ">= 0"), ({"top_p": 0}, "top-p")]:
        with pytest.raises(ValueError, match=match):
            GenerationSettings(**bad).validate()


# ----------------------------------------------------------------------------------------------
# generation: streaming, batching, pipeline


def test_streamed_text_equals_generate(ckpt, images):
    _, model, processor = ckpt
    messages = chat(images["wide.png"])
    new_ids, expected = greedy_answer(model, processor, messages)
    assert len(new_ids) > 3 and expected.strip()
    inputs = prepare_inputs(model, processor, messages)
    pieces = list(stream_generate(model, processor.tokenizer, inputs, max_new_tokens=12, do_sample=False))
    assert len(pieces) > 1  # really streamed, not one final chunk
    assert "".join(pieces).strip() == expected

    engine = ChatEngine(model, processor, GenerationSettings(max_new_tokens=12, temperature=0))
    conv = Conversation()
    conv.add_image(images["wide.png"])
    assert engine.answer(conv, QUESTION) == expected
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[1]["content"][0]["text"] == expected


def test_stream_generate_reraises_errors_from_the_generation_thread(ckpt):
    _, model, processor = ckpt
    ids = torch.tensor([[1, model.config.image_token_id, 5]])  # one image token, two images
    size = model.config.vision_config.image_size
    bad = {"input_ids": ids, "pixel_values": torch.zeros(2, 3, size, size)}
    with pytest.raises(ValueError, match="but 2 images were given"):
        list(stream_generate(model, processor.tokenizer, bad, max_new_tokens=2))


def test_batched_mixed_sizes_left_padding_equals_one_at_a_time(ckpt, images):
    _, model, processor = ckpt
    convs = [
        chat(images["wide.png"], "What is in the image?"),
        chat(images["tall.jpg"], "Describe the picture in detail please, what colour is the sky?"),
        chat(images["square.png"], "How many?"),
    ]
    batch = processor.apply_chat_template(
        convs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"})
    mask = batch["attention_mask"]
    assert mask[:, 0].tolist().count(0) == 2 and mask[:, -1].all()  # two rows really left-padded
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=10, do_sample=False)
    batched_ids = out[:, batch["input_ids"].shape[1]:]
    texts = generate_batch(model, processor, convs, max_new_tokens=10, do_sample=False)
    for row, conv in enumerate(convs):
        single_ids, single_text = greedy_answer(model, processor, conv, max_new_tokens=10)
        got = batched_ids[row][: len(single_ids)]
        assert got.tolist() == single_ids.tolist()
        # after an early EOS the batch row holds only padding
        assert set(batched_ids[row][len(single_ids):].tolist()) <= {processor.tokenizer.pad_token_id}
        assert texts[row] == single_text


def test_pipeline_single_and_batched(ckpt, images):
    from transformers import pipeline

    path, model, processor = ckpt
    pipe = pipeline("image-text-to-text", model=str(path))
    assert type(pipe.model).__name__ == "EagleVLForConditionalGeneration"
    convs = [
        [{"role": "user", "content": [{"type": "image", "path": str(images["wide.png"])},
                                      {"type": "text", "text": "What is in the image?"}]}],
        [{"role": "user", "content": [{"type": "image", "path": str(images["tall.jpg"])},
                                      {"type": "text", "text": "Describe the picture in detail please"}]}],
        [{"role": "user", "content": [{"type": "image", "path": str(images["square.png"])},
                                      {"type": "text", "text": "How many?"}]}],
    ]
    expected = [greedy_answer(model, processor, c, max_new_tokens=10)[1] for c in convs]
    single = pipe(text=convs[0], max_new_tokens=10)
    assert single[0]["generated_text"][-1]["role"] == "assistant"
    # The pipeline cuts the decoded prompt off the decoded sequence, which leaves the separator
    # space in front of the answer.
    assert single[0]["generated_text"][-1]["content"].lstrip() == expected[0]
    batched = pipe(text=convs, max_new_tokens=10, return_full_text=False, batch_size=3)
    assert [r[0]["generated_text"].lstrip() for r in batched] == expected


def test_context_budget(small_context_ckpt, images):
    model, processor = load_model_and_processor(small_context_ckpt, "cpu", "float32")
    assert fit_new_tokens(model, 50, 100) == 14
    overflow = r"is 64 tokens long \(including 1 image of 16 tokens\), but this model reads at most 64"
    with pytest.raises(ContextLengthError, match=overflow):
        fit_new_tokens(model, 64, 10, images=1)
    engine = ChatEngine(model, processor, GenerationSettings(max_new_tokens=50, temperature=0))
    conv = Conversation()
    conv.add_image(images["wide.png"])
    message, inputs, gen = engine.prepare(conv, QUESTION)
    assert gen["max_new_tokens"] == 64 - inputs["input_ids"].shape[1]  # clipped to what fits
    engine.answer(conv, QUESTION)
    before = [dict(m) for m in conv.messages]
    with pytest.raises(ContextLengthError, match="reads at most 64; start a new conversation"):
        engine.answer(conv, "And what colour is the sky in this picture ?")
    assert conv.messages == before  # a refused turn leaves the conversation as it was


# ----------------------------------------------------------------------------------------------
# chat CLI


def run_cli(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_chat_one_shot_streams_the_greedy_answer(ckpt, images, capsys):
    path, model, processor = ckpt
    expected = greedy_answer(model, processor, chat(images["wide.png"]), max_new_tokens=12)[1]
    rc, out, err = run_cli(["chat", "--model", str(path), "--image", str(images["wide.png"]), "--prompt", QUESTION,
                            "--device", "cpu", "--dtype", "float32", "--temperature", "0"], capsys)
    assert rc == 0, err
    assert out == expected + "\n"


def test_chat_interactive_session(ckpt, images, capsys, monkeypatch):
    path, model, processor = ckpt
    engine = ChatEngine(model, processor, GenerationSettings(temperature=0))
    conv = Conversation()
    conv.add_image(images["wide.png"])
    first = engine.answer(conv, "What is in the image?")
    second = engine.answer(conv, "And the colour?")
    conv.reset()
    conv.add_image(images["tall.jpg"])
    third = engine.answer(conv, "Describe it")
    script = "\n".join([
        f"/image {images['wide.png']}",
        "What is in the image?",
        "And the colour?",
        f"/image {images['copy_of_wide.bmp']}",  # same pixels: refused, session goes on
        f"/image {images['bad.png']}",           # unreadable: refused, session goes on
        "/image",
        "/frobnicate",
        "/reset",
        f"/image {images['tall.jpg']}",
        "Describe it",
        "/quit",
        "never answered",
    ]) + "\n"
    rc, out, err = run_cli(["chat", "--model", str(path), "--device", "cpu", "--temperature", "0"], capsys,
                           stdin=script, monkeypatch=monkeypatch)
    assert rc == 0
    assert out.splitlines() == [first, second, third]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: image {images['copy_of_wide.bmp']} is already part of this conversation; ask about it directly, "
        "or start a new conversation (/reset or Clear) to use it again",
        f"error: {images['bad.png']} is not an image file that can be read (PNG, JPEG, WebP, ... expected)",
        "error: /image needs a path, e.g. /image photo.jpg",
        "error: unknown command /frobnicate; commands: /image PATH (attach an image to the next question), "
        "/reset (new conversation), /quit",
    ]
    assert "conversation cleared" in err


def test_chat_interactive_reports_context_overflow_and_goes_on(small_context_ckpt, images, capsys, monkeypatch):
    script = f"/image {images['wide.png']}\n{QUESTION}\nAnd what colour is the sky in this picture ?\n/reset\nhi\n"
    rc, out, err = run_cli(["chat", "--model", str(small_context_ckpt), "--temperature", "0"], capsys,
                           stdin=script, monkeypatch=monkeypatch)
    assert rc == 0
    assert len(out.splitlines()) == 2  # first and last question answered, the overflowing one refused
    assert any(line.startswith("error: the conversation is") and "reads at most 64" in line
               for line in err.splitlines())


@pytest.mark.parametrize("case", ["missing", "not_eagle", "bad_image", "twice", "empty", "too_long", "no_config"])
def test_chat_bad_input_one_line_exit_2(case, ckpt, small_context_ckpt, images, tmp_path, capsys):
    path = str(ckpt[0])
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    argv, message = {
        "missing": (["--model", str(tmp_path / "nope"), "--prompt", "hi"],
                    f"model folder {tmp_path / 'nope'} does not exist"),
        "no_config": (["--model", str(tmp_path), "--prompt", "hi"], f"{tmp_path} has no config.json"),
        "not_eagle": (["--model", str(bert), "--prompt", "hi"], f"{bert} holds a 'bert' model, not an eagle-hf"),
        "bad_image": (["--model", path, "--image", str(images["bad.png"]), "--prompt", "hi"],
                      f"{images['bad.png']} is not an image file that can be read"),
        "twice": (["--model", path, "--image", str(images["wide.png"]), "--image", str(images["wide.png"]),
                   "--prompt", "hi"], f"image {images['wide.png']} is already part of this conversation"),
        "empty": (["--model", path, "--prompt", "  "], "the prompt is empty"),
        "too_long": (["--model", str(small_context_ckpt), "--prompt", "what " * 80],
                     "the conversation is 113 tokens long, but this model reads at most 64"),
    }[case]
    rc, out, err = run_cli(["chat", *argv], capsys)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eagle-hf chat: error: ")
    assert message in lines[0]


def test_chat_loads_a_folder_moved_elsewhere(ckpt, tmp_path, capsys, images):
    """The folder is self-contained: a copy answers exactly like the original."""
    copy = tmp_path / "copy"
    shutil.copytree(ckpt[0], copy)
    a = run_cli(["chat", "--model", str(ckpt[0]), "--prompt", "hi", "--temperature", "0"], capsys)
    b = run_cli(["chat", "--model", str(copy), "--prompt", "hi", "--temperature", "0"], capsys)
    assert a[0] == b[0] == 0 and a[1] == b[1] and a[1].strip()

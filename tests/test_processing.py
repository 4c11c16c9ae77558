"""EagleImageProcessor and EagleProcessor: parity with the original preprocessing and
``tokenizer_image_token``, input handling, errors, padding/truncation, labels, save/load."""

import ast
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from eagle_hf.testing.parity import find_parity_dir
from eagle_hf.processing import (
    IGNORE_INDEX,
    EagleImageProcessor,
    EagleProcessor,
    jinja_chat_template,
    render_with_spans,
)


PROCESSING_DIR = Path(__file__).resolve().parents[1] / "src" / "eagle_hf" / "processing"


PARITY = (find_parity_dir() or Path('shared/parity'))
needs_parity = pytest.mark.skipif(not (PARITY / "prompts.json").exists(), reason="parity fixtures not available")


# --------------------------------------------------------------------------------------------------
# Tiny offline tokenizers


def char_tokenizer(bos="<s>", add_bos=True, extra_special=()):
    """Character-level toy of prompts.json: ids = [1] + [ord(c) + 3 for c in s]."""
    vocab = {"<unk>": 0, bos: 1, "</s>": 2}
    vocab.update({chr(i): i + 3 for i in range(256)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    specials = ["<unk>", bos, "</s>", "<|eot_id|>", "<|im_end|>", "<|im_start|>", *extra_special]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(specials)])
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def ids_of(text):
    return [ord(c) + 3 for c in text]


def make_processor(seq=4, size=16, template="vicuna_v1", tokenizer=None, **kwargs):
    tokenizer = tokenizer if tokenizer is not None else char_tokenizer()
    return EagleProcessor(EagleImageProcessor(size=size), tokenizer, image_seq_length=seq, template_name=template,
                          **kwargs)


def rgb(width=40, height=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# Fixture image recipe (README "Test image recipe")


def draw_recipe_image(width, height):
    x = np.arange(width)[None, :].repeat(height, 0)
    y = np.arange(height)[:, None].repeat(width, 1)
    img = np.zeros((height, width, 3), np.int64)
    img[..., 0] = 255 * x // (width - 1)
    img[..., 1] = 255 * y // (height - 1)
    img[..., 2] = 255 * (x + y) // (width + height - 2)
    box = (x >= width // 16) & (x < width // 16 + width // 4) & (y >= height // 16) & (y < height // 16 + height // 4)
    checker = np.where(((x // 8) + (y // 8)) % 2 == 0, 255, 0)
    img[box] = checker[box][:, None]
    box = (x >= width // 2) & (x < width - width // 16) & (y >= height // 2) & (y < height - height // 16)
    stripes = np.where(((((x + y) // 12) % 2) == 0)[..., None], [255, 255, 0], [0, 0, 128])
    img[box] = stripes[box]
    rectangles = [
        ((220, 20, 60), (width * 5 // 8, height // 8, width * 7 // 8, height * 3 // 8)),
        ((30, 60, 200), (width // 8, height * 5 // 8, width * 3 // 8, height * 7 // 8)),
        ((255, 255, 255), (0, height // 2 - 2, width - 1, height // 2 + 1)),
    ]
    for colour, (x0, y0, x1, y1) in rectangles:
        img[y0:y1 + 1, x0:x1 + 1] = colour
    return img.astype(np.uint8)


@needs_parity
@pytest.mark.parametrize("case", ["public-clip", "public-x5"])
def test_preprocessing_matches_original_fixture(case):
    fixture = json.loads((PARITY / f"{case}.json").read_text())
    spec = fixture["inputs"]["image"]
    image = draw_recipe_image(spec["width"], spec["height"])
    assert int(image.astype(np.int64).sum()) == spec["checksum_sum_of_uint8"]

    expected_pv = fixture["outputs"]["pixel_values"]
    size = expected_pv["shape"][-1]
    assert size == (336 if case == "public-clip" else 1024)
    processor = EagleImageProcessor(size=size) if size != 1024 else EagleImageProcessor()

    square = processor.square_uint8(Image.fromarray(image))
    reference = np.asarray(Image.open(PARITY / f"{case}.preprocessed.png").convert("RGB"))
    assert square.dtype == np.uint8 and square.shape == (size, size, 3)
    assert np.array_equal(square, reference)

    pixel_values = processor(Image.fromarray(image), return_tensors="pt")["pixel_values"]
    assert pixel_values.dtype == torch.float32
    assert list(pixel_values.shape) == expected_pv["shape"]
    got = torch.stack([pixel_values[tuple(index)] for index in expected_pv["indices"]])
    torch.testing.assert_close(got, torch.tensor(expected_pv["values"]), atol=1e-4, rtol=1e-4)
    assert abs(pixel_values.double().mean().item() - expected_pv["mean"]) < 1e-5
    assert abs(pixel_values.double().std(unbiased=False).item() - expected_pv["std"]) < 1e-5

    # The documented affine map from the uint8 image to pixel_values, bit for bit.
    mean = np.float32(processor.image_mean).reshape(3, 1, 1)
    std = np.float32(processor.image_std).reshape(3, 1, 1)
    affine = ((reference.transpose(2, 0, 1).astype(np.float64) * (1 / 255)).astype(np.float32) - mean) / std
    assert np.array_equal(pixel_values[0].numpy(), affine)


def test_defaults_and_pad_colour():
    processor = EagleImageProcessor()
    assert processor.size.shortest_edge == 1024
    assert (processor.crop_size.height, processor.crop_size.width) == (1024, 1024)
    assert processor.pad_to_square is True
    # A wide image: the bands above and below are the mean colour (122, 116, 104).
    unresized = EagleImageProcessor(size=40, do_resize=False)
    square = unresized.square_uint8(Image.new("RGB", (40, 10), (255, 255, 255)))
    assert square.shape == (40, 40, 3)
    assert (square[:15] == (122, 116, 104)).all() and (square[25:] == (122, 116, 104)).all()
    assert (square[15:25] == 255).all()
    small = EagleImageProcessor(size=8).square_uint8(Image.new("RGB", (40, 24), (255, 255, 255)))
    assert small.shape == (8, 8, 3) and tuple(small[4, 4]) == (255, 255, 255)


def test_pad_paste_offsets_match_expand2square():
    processor = EagleImageProcessor(size=10, do_resize=False, do_center_crop=False)
    image = np.zeros((3, 10, 3), np.uint8) + 7
    square = processor.square_uint8(image)
    assert square.shape == (10, 10, 3)
    rows = np.where((square == 7).all(-1).all(-1))[0]
    assert rows.tolist() == [3, 4, 5]  # offset (10 - 3) // 2


def test_without_padding_shortest_edge_resize_and_centre_crop():
    image = Image.fromarray(rgb(40, 30))
    processor = EagleImageProcessor(size=12)
    got = processor.square_uint8(image, pad_to_square=False)
    resized = np.asarray(image.resize((16, 12), resample=Image.BICUBIC))  # int(12 * 40 / 30) = 16
    assert np.array_equal(got, resized[:, 2:14])


def reference_pixels(square_hwc, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    """The original arithmetic, written out: float32(float64(u8) / 255), then (x - mean) / std in float32."""
    x = (square_hwc.astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)
    return (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


@pytest.mark.parametrize("kwargs,expected_hw", [
    ({"size": 12, "pad_to_square": False}, (12, 12)),  # PIL crop of the resized 16x12 image
    ({"size": {"shortest_edge": 12}, "crop_size": {"height": 8, "width": 10}, "pad_to_square": False}, (8, 10)),
    ({"size": 12, "crop_size": {"height": 20, "width": 14}}, (20, 14)),  # crop larger: zero padding
    ({"size": 12, "do_center_crop": False, "pad_to_square": False}, (12, 16)),  # not square: no batch
])
def test_crop_paths_and_values_match_transformers_center_crop(kwargs, expected_hw):
    from transformers.image_transforms import center_crop

    image = Image.fromarray(rgb(40, 30, seed=4))
    processor = EagleImageProcessor(**kwargs)
    opts = processor._standardize_kwargs(**{**{k: getattr(processor, k, None) for k in processor._valid_kwargs_names},
                                            **kwargs})
    canvas = processor.expand_to_square(image, (122, 116, 104)) if opts["pad_to_square"] else image
    height, width = processor._resize_target(canvas.width, canvas.height, opts["size"])
    resized = np.asarray(canvas.resize((width, height), resample=Image.BICUBIC))
    if opts["do_center_crop"]:
        crop = opts["crop_size"]
        resized = center_crop(resized, (crop.height, crop.width), data_format="channels_last",
                              input_data_format="channels_last")
    assert resized.shape[:2] == expected_hw
    assert np.array_equal(processor.square_uint8(image), resized)
    got = processor(image, return_tensors="np")["pixel_values"]
    assert np.array_equal(got[0], reference_pixels(resized))
    unbatched = processor([image, image])["pixel_values"]
    assert all(np.array_equal(u, got[0]) for u in unbatched)


@pytest.mark.parametrize("resample", ["BICUBIC", "BILINEAR", "LANCZOS", "BOX", "HAMMING"])
def test_padded_resize_computes_only_the_image_band_and_equals_full_pil_resize_bit_for_bit(resample):
    """The padded canvas is resized by PIL only where the image is (`PaddedSquare`): the result and the
    pixel values equal resizing the whole canvas, for both orientations, down- and up-scaling, odd sizes,
    and sizes where the band's box would not be exact (which must fall back to the full resize)."""
    from eagle_hf.processing.image_processing_eagle import PaddedSquare

    filt = getattr(Image.Resampling, resample)
    rng = np.random.default_rng(1)
    banded = 0
    for (width, height), size in [((640, 480), 1024), ((480, 640), 1024), ((1000, 563), 1024), ((37, 1200), 1024),
                                  ((3000, 2000), 1024), ((2, 900), 1024), ((1023, 1024), 1024), ((333, 222), 448),
                                  ((640, 480), 333), ((50, 20), 1024)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        processor = EagleImageProcessor(size=size, resample=filt)
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), (122, 116, 104))
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        expected = np.asarray(canvas.resize((size, size), resample=filt))
        opts = processor._standardize_kwargs(**{k: getattr(processor, k, None) for k in processor._valid_kwargs_names})
        square = processor._square_image(image, pad_to_square=True, do_resize=True, size=opts["size"], resample=filt,
                                         do_center_crop=True, crop_size=opts["crop_size"], image_mean=OPENAI_CLIP_MEAN)
        banded += isinstance(square, PaddedSquare)
        assert np.array_equal(processor.square_uint8(image), expected), (width, height, size)
        got = processor(image, return_tensors="np")["pixel_values"][0]
        assert np.array_equal(got, reference_pixels(expected)), (width, height, size)
    assert banded >= 7  # the 1024 targets are exact; (333, 222) -> 448 and 640 -> 333 may fall back


def test_value_lookup_without_torch_gives_the_same_bits(monkeypatch):
    """The pair-table look-up gathers with torch when it is there and with numpy otherwise: same values,
    including odd pixel counts (a last unpaired pixel) and planes whose 8-byte words are misaligned."""
    from eagle_hf.processing import image_processing_eagle as ipe

    images = [Image.fromarray(rgb(33, 21, seed=s)) for s in range(3)] + [Image.fromarray(rgb(640, 480, seed=9))]
    processors = [EagleImageProcessor(size=333), EagleImageProcessor(size=17), EagleImageProcessor()]
    with_torch = [p(images, return_tensors="np")["pixel_values"] for p in processors]
    ipe._pair_tables.cache_clear()
    monkeypatch.setattr(ipe, "torch", None)
    try:
        without = [p(images, return_tensors="np")["pixel_values"] for p in processors]
    finally:
        ipe._pair_tables.cache_clear()
    for a, b, p in zip(with_torch, without, processors):
        assert np.array_equal(a, b)
        assert np.array_equal(a[0], reference_pixels(p.square_uint8(images[0])))


# --------------------------------------------------------------------------------------------------
# Input kinds


def pv(processor, image, **kwargs):
    return processor(image, return_tensors="pt", **kwargs)["pixel_values"]


def test_input_kinds_give_identical_pixels(tmp_path):
    processor = EagleImageProcessor(size=16)
    array = rgb()
    reference = pv(processor, Image.fromarray(array))
    assert reference.shape == (1, 3, 16, 16)

    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    variants = {
        "numpy_hwc": array,
        "numpy_chw": np.ascontiguousarray(array.transpose(2, 0, 1)),
        "float_hwc": array.astype(np.float32) / 255,
        "torch_chw_uint8": torch.from_numpy(array).permute(2, 0, 1),
        "torch_chw_float": torch.from_numpy(array).permute(2, 0, 1).float() / 255,
        "torch_hwc": torch.from_numpy(array),
        "path_str": str(path),
        "path_obj": path,
        "bytes": path.read_bytes(),
    }
    for name, variant in variants.items():
        assert torch.equal(pv(processor, variant), reference), name


def test_batches_and_nested_lists():
    processor = EagleImageProcessor(size=16)
    images = [Image.fromarray(rgb(seed=s)) for s in range(3)]
    single = torch.cat([pv(processor, im) for im in images])
    assert torch.equal(pv(processor, images), single)
    assert torch.equal(pv(processor, [[images[0]], images[1:]]), single)
    batch = np.stack([np.asarray(im) for im in images])
    assert torch.equal(pv(processor, batch), single)
    assert torch.equal(pv(processor, torch.from_numpy(batch).permute(0, 3, 1, 2)), single)
    unbatched = processor(images)["pixel_values"]
    assert isinstance(unbatched, list) and len(unbatched) == 3 and unbatched[0].dtype == np.float32


def test_mode_conversions():
    processor = EagleImageProcessor(size=8)
    colour = np.zeros((10, 12, 3), np.uint8)
    colour[...] = (200, 30, 90)
    # RGBA: alpha is dropped (PIL convert("RGB")), even where fully transparent.
    rgba = np.concatenate([colour, np.zeros((10, 12, 1), np.uint8)], axis=-1)
    expected = pv(processor, colour)
    assert torch.equal(pv(processor, Image.fromarray(rgba, mode="RGBA")), expected)
    assert torch.equal(pv(processor, rgba), expected)
    # L and 2-D arrays become grey RGB.
    grey = np.full((10, 12), 77, np.uint8)
    grey_rgb = np.repeat(grey[..., None], 3, -1)
    assert torch.equal(pv(processor, Image.fromarray(grey, mode="L")), pv(processor, grey_rgb))
    assert torch.equal(pv(processor, grey), pv(processor, grey_rgb))
    assert torch.equal(pv(processor, grey[None]), pv(processor, grey_rgb))
    # CMYK uses PIL's conversion.
    cmyk = Image.new("CMYK", (12, 10), (10, 20, 30, 40))
    assert torch.equal(pv(processor, cmyk), pv(processor, np.asarray(cmyk.convert("RGB"))))
    # Palette and 1-bit images convert without error.
    assert pv(processor, Image.fromarray(colour).convert("P")).shape == (1, 3, 8, 8)
    assert pv(processor, Image.new("1", (12, 10), 1)).shape == (1, 3, 8, 8)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    processor = EagleImageProcessor(size=8, pad_to_square=False)
    values = np.full((10, 10), 257 * 100, np.uint16)
    values[:5] = 65535
    expected = np.where(np.arange(10)[:, None] < 5, 255, 100).astype(np.uint8).repeat(10, 1)
    expected_pv = pv(processor, expected)
    as_pil = Image.fromarray(values)
    assert as_pil.mode == "I;16"
    assert torch.equal(pv(processor, as_pil), expected_pv)
    assert torch.equal(pv(processor, values), expected_pv)
    assert torch.equal(pv(processor, Image.fromarray(values.astype(np.int32))), expected_pv)  # mode "I"
    path = tmp_path / "sixteen.png"
    as_pil.save(path)
    assert torch.equal(pv(processor, str(path)), expected_pv)
    # A clipping conversion would have made everything white.
    assert not torch.equal(pv(processor, as_pil.convert("RGB")), expected_pv)


@pytest.mark.parametrize(
    "image,match",
    [
        (Image.new("RGB", (1, 1)), "too small"),
        (Image.new("RGB", (1, 40)), "too small"),
        (np.zeros((1, 1, 3), np.uint8), "too small"),
        (Image.new("RGB", (0, 0)), "empty image"),
        (np.zeros((0, 5, 3), np.uint8), "empty image"),
        (np.zeros((6, 6, 2), np.uint8), "channels"),
        (np.zeros((6, 6, 5), np.uint8), "channels"),
        (np.full((6, 6, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((6, 6, 3), 300, np.int32), "0..255"),
        (np.zeros((2, 2, 6, 6, 3), np.uint8), "dimensions"),
        ("/nonexistent/dir/image.png", "image /nonexistent/dir/image.png does not exist"),
    ],
)
def test_invalid_images_raise_clear_errors(image, match):
    with pytest.raises(ValueError, match=match):
        EagleImageProcessor(size=8)(image)


def test_corrupt_file_and_directory(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    processor = EagleImageProcessor(size=8)
    with pytest.raises(ValueError, match="broken.png is not an image file that can be read"):
        processor(str(bad))
    truncated = tmp_path / "truncated.png"
    Image.fromarray(rgb(64, 64)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png could not be read as an image"):
        processor(truncated)
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        processor(str(tmp_path))
    with pytest.raises(TypeError, match="unsupported image type"):
        processor(12345)


def test_image_processor_save_load_round_trip(tmp_path):
    processor = EagleImageProcessor(size=24, pad_to_square=False)
    assert processor.crop_size.height == 24
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "EagleImageProcessor"
    assert config["pad_to_square"] is False and config["size"] == {"shortest_edge": 24}
    reloaded = EagleImageProcessor.from_pretrained(tmp_path)
    assert reloaded.pad_to_square is False and reloaded.crop_size.width == 24 and reloaded.resample == 3
    image = Image.fromarray(rgb(50, 30))
    assert torch.equal(pv(processor, image), pv(reloaded, image))
    assert pv(reloaded, image).shape == (1, 3, 24, 24)


# --------------------------------------------------------------------------------------------------
# tokenizer_image_token


@needs_parity
def test_toy_example_of_original_tokenizer_image_token():
    toy = json.loads((PARITY / "prompts.json").read_text())["tokenizer_image_token"]["toy_example"]
    tokenizer = char_tokenizer()
    for chunk, chunk_ids in zip(toy["prompt"].split("<image>"), toy["chunk_ids"]):
        assert tokenizer(chunk)["input_ids"] == chunk_ids
    for seq in (1, 3, 1024):
        processor = make_processor(seq=seq, tokenizer=char_tokenizer())
        image_id = processor.image_token_id
        expected = []
        for token in toy["input_ids"]:
            expected.extend([image_id] * seq if token == toy["image_token_index"] else [token])
        images = [Image.fromarray(rgb(seed=i)) for i in range(2)]
        out = processor(images=images, text=toy["prompt"])
        assert out["input_ids"] == [expected]
        assert out["attention_mask"] == [[1] * len(expected)]


def test_image_token_is_added_to_tokenizer_when_missing():
    tokenizer = char_tokenizer()
    size_before = len(tokenizer)
    assert "<image>" not in tokenizer.get_vocab()
    processor = make_processor(tokenizer=tokenizer)
    assert len(tokenizer) == size_before + 1
    assert processor.image_token_id == size_before == tokenizer.convert_tokens_to_ids("<image>")
    # A tokenizer that already has it keeps its id.
    again = EagleProcessor(EagleImageProcessor(size=8), tokenizer, image_seq_length=2)
    assert again.image_token_id == processor.image_token_id and len(tokenizer) == size_before + 1


def test_image_token_counts_per_image():
    processor = make_processor(seq=1024, tokenizer=char_tokenizer())
    image = Image.fromarray(rgb())
    one = processor(images=image, text="<image>\nDescribe.", return_tensors="pt")
    assert int((one["input_ids"] == processor.image_token_id).sum()) == 1024
    assert one["input_ids"][0, 0].item() == 1 and one["input_ids"][0, 1].item() == processor.image_token_id
    assert one["input_ids"].shape[1] == 1 + 1024 + len("\nDescribe.")
    assert one["pixel_values"].shape == (1, 3, 16, 16)
    two = processor(images=[image, image], text="A<image>B<image>C", return_tensors="pt")
    assert int((two["input_ids"] == processor.image_token_id).sum()) == 2048
    assert two["pixel_values"].shape == (2, 3, 16, 16)
    assert processor._get_num_multimodal_tokens(image_sizes=[(480, 640), (10, 20)]).num_image_tokens == [1024, 1024]


def test_special_token_behaviour_of_chunks():
    image = Image.fromarray(rgb())
    processor = make_processor(seq=2)
    img = processor.image_token_id
    assert processor(images=image, text="AB<image>C", add_special_tokens=False)["input_ids"] == [
        [*ids_of("AB"), img, img, *ids_of("C")]]
    # A tokenizer without BOS (like Yi's): nothing is dropped from later chunks.
    no_bos = make_processor(seq=2, tokenizer=char_tokenizer(add_bos=False))
    assert no_bos(images=image, text="AB<image>C")["input_ids"] == [[*ids_of("AB"), img, img, *ids_of("C")]]
    # Special tokens written in the text are tokenized as such inside a chunk.
    out = processor(images=image, text="<image>x</s>y")["input_ids"][0]
    assert out == [1, img, img, ids_of("x")[0], 2, ids_of("y")[0]]


def test_llama3_double_bos_is_kept_like_the_original():
    tokenizer = char_tokenizer(bos="<|begin_of_text|>", extra_special=["<|start_header_id|>", "<|end_header_id|>"])
    processor = EagleProcessor(EagleImageProcessor(size=8), tokenizer, image_seq_length=2, template_name="llama3")
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(rgb())},
                                             {"type": "text", "text": "Hi"}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    bos = tokenizer.bos_token_id
    assert out["input_ids"][0][:3] == [bos, bos, tokenizer.convert_tokens_to_ids("<|start_header_id|>")]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert out["input_ids"] == processor(images=Image.fromarray(rgb()), text=text)["input_ids"]
    # The template itself starts with the BOS string (the tokenizer adds one), so tokenising without special
    # tokens, as TRL does, gives the same ids; a template without it gives the single BOS of the text.
    assert processor.chat_template.count("bos_token") == 1 and text.startswith(2 * tokenizer.bos_token)
    plain = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                          processor_kwargs={"add_special_tokens": False})
    assert plain["input_ids"] == out["input_ids"]
    single = processor.apply_chat_template(messages, chat_template=jinja_chat_template("llama3"),
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           processor_kwargs={"add_special_tokens": False})
    assert single["input_ids"][0][:2] == [bos, tokenizer.convert_tokens_to_ids("<|start_header_id|>")]


def test_mismatched_placeholders_and_images():
    processor = make_processor()
    image = Image.fromarray(rgb())
    with pytest.raises(ValueError, match=r"2 '<image>' placeholder.*1 image"):
        processor(images=[image], text="<image><image>x")
    with pytest.raises(ValueError, match=r"0 '<image>' placeholder.*2 image"):
        processor(images=[image, image], text="no placeholder")
    with pytest.raises(ValueError, match=r"3 '<image>' placeholder.*no images"):
        processor(text=["<image>", "<image><image>"])
    with pytest.raises(ValueError, match=r"text 1 contains 1 '<image>' placeholder.*2 image"):
        processor(images=[[image], [image, image]], text=["<image>a", "<image>b"])
    with pytest.raises(ValueError, match="2 lists for 1 texts"):
        processor(images=[[image], [image]], text=["<image>a"])
    # Flat images are assigned in reading order across the batch; nested lists per text also work.
    flat = processor(images=[image, image], text=["<image>a", "b<image>"], padding=True)
    nested = processor(images=[[image], [image]], text=["<image>a", "b<image>"], padding=True)
    assert flat["input_ids"] == nested["input_ids"]
    empty = processor(images=[[image], []], text=["<image>a", "b"], padding=True, return_tensors="pt")
    assert empty["pixel_values"].shape[0] == 1


def test_truncation_never_splits_an_image():
    processor = make_processor(seq=4)
    image = Image.fromarray(rgb())
    text = "AB<image>CDEFG"  # [bos, A, B, img x4 (3..6), C..G (7..11)] -> 12 tokens
    full = processor(images=image, text=text)["input_ids"][0]
    assert len(full) == 12
    cut = processor(images=image, text=text, truncation=True, max_length=9)["input_ids"][0]
    assert cut == full[:9] and cut.count(processor.image_token_id) == 4
    exact = processor(images=image, text=text, truncation=True, max_length=7)["input_ids"][0]
    assert exact == full[:7]
    with pytest.raises(ValueError, match="cut through image 0"):
        processor(images=image, text=text, truncation=True, max_length=5)
    with pytest.raises(ValueError, match="remove image 0"):
        processor(images=image, text=text, truncation=True, max_length=3)
    assert processor(images=image, text=text, max_length=5)["input_ids"][0] == full  # truncation off
    assert processor(images=image, text=text, truncation=True, max_length=50)["input_ids"][0] == full


def test_left_and_right_padding():
    processor = make_processor(seq=2)
    image = Image.fromarray(rgb())
    texts = ["<image>A", "xyz<image>Bcd"]
    short = processor(images=image, text=texts[0])["input_ids"][0]
    long = processor(images=image, text=texts[1])["input_ids"][0]
    pad = processor.tokenizer.pad_token_id
    extra = len(long) - len(short)
    assert extra == 5
    left = processor(images=[image, image], text=texts, padding=True, padding_side="left", return_tensors="pt")
    assert left["input_ids"].tolist() == [[pad] * extra + short, long]
    assert left["attention_mask"].tolist() == [[0] * extra + [1] * len(short), [1] * len(long)]
    right = processor(images=[image, image], text=texts, padding="longest", return_tensors="pt")
    assert right["input_ids"].tolist() == [short + [pad] * extra, long]
    assert right["attention_mask"][0].tolist() == [1] * len(short) + [0] * extra
    to_max = processor(images=[image, image], text=texts, padding="max_length", max_length=16, padding_side="left")
    assert [len(r) for r in to_max["input_ids"]] == [16, 16] and to_max["input_ids"][1][:4] == [pad] * 4
    nested_kwargs = processor(images=[image, image], text=texts, text_kwargs={"padding": True, "padding_side": "left"},
                              return_tensors="pt")
    assert torch.equal(nested_kwargs["input_ids"], left["input_ids"])
    multiple = processor(images=[image, image], text=texts, padding=True, pad_to_multiple_of=8)
    assert {len(r) for r in multiple["input_ids"]} == {16}
    with pytest.raises(ValueError, match="padding=True"):
        processor(images=[image, image], text=texts, return_tensors="pt")
    mm = processor(images=[image, image], text=texts, padding=True, return_mm_token_type_ids=True)
    assert mm["mm_token_type_ids"][0] == [1 if t == processor.image_token_id else 0 for t in mm["input_ids"][0]]


def test_outputs_and_model_input_names():
    processor = make_processor(seq=3)
    out = processor(images=Image.fromarray(rgb()), text="<image>hi", return_tensors="pt")
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["input_ids"].dtype == torch.long and out["pixel_values"].dtype == torch.float32
    assert processor.model_input_names == ["input_ids", "attention_mask", "pixel_values"]
    only_images = processor(images=[Image.fromarray(rgb())] * 2, return_tensors="pt")
    assert set(only_images) == {"pixel_values"} and only_images["pixel_values"].shape == (2, 3, 16, 16)
    assert processor.batch_decode([ids_of("ok")]) == processor.tokenizer.batch_decode([ids_of("ok")])
    assert processor.decode(ids_of("ok"), skip_special_tokens=True) == processor.tokenizer.decode(ids_of("ok"))
    with pytest.raises(ValueError, match="needs `text`, `images`"):
        processor()


# --------------------------------------------------------------------------------------------------
# Chat templates through the processor


def test_apply_chat_template_loads_images_from_content(tmp_path):
    processor = make_processor(seq=5, template="yi_34b_chatml_direct")
    array = rgb(30, 20)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    for block in ({"type": "image", "image": Image.fromarray(array)}, {"type": "image", "path": str(path)},
                  {"type": "image", "url": str(path)}):
        messages = [{"role": "user", "content": [block, {"type": "text", "text": "What?"}]}]
        out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt")
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        # The test tokenizer adds a BOS, so the template starts with its string.
        assert prompt == "<s><|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat?" \
                         "<|im_end|><|im_start|>assistant\n"
        direct = processor(images=Image.fromarray(array), text=prompt, return_tensors="pt")
        assert torch.equal(out["input_ids"], direct["input_ids"])
        assert torch.equal(out["pixel_values"], direct["pixel_values"])
        assert int((out["input_ids"] == processor.image_token_id).sum()) == 5


def test_labels_mask_everything_but_assistant_answers():
    processor = make_processor(seq=3, template="vicuna_v1")
    image = Image.fromarray(rgb())
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Orange."}]},
    ]
    out = processor.apply_chat_template_with_labels(messages)
    assert set(out) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    kept = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert all(l in (IGNORE_INDEX, t) for t, l in zip(ids, labels))
    assert kept == ids_of("A cat.") + [2] + ids_of("Orange.") + [2]
    assert labels[0] == IGNORE_INDEX
    assert all(l == IGNORE_INDEX for t, l in zip(ids, labels) if t == processor.image_token_id)
    assert out["pixel_values"].shape == (1, 3, 16, 16)
    # The same labels from the Python renderer's spans.
    text, spans = render_with_spans("vicuna_v1", messages)
    direct = processor.build_labels(text, spans, images=image)
    assert torch.equal(direct["labels"], out["labels"]) and torch.equal(direct["input_ids"], out["input_ids"])


@pytest.mark.parametrize("template,closing", [("llama3", "<|eot_id|>"), ("yi_34b_chatml_direct", "<|im_end|>"),
                                              ("plain", "\n")])
def test_labels_other_templates_and_left_padded_batch(template, closing):
    tokenizer = char_tokenizer(extra_special=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>"])
    processor = make_processor(seq=2, template=template, tokenizer=tokenizer)
    image = Image.fromarray(rgb())
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Q"}]},
         {"role": "assistant", "content": "Answer one"}],
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Longer question"}]},
         {"role": "assistant", "content": "Two"}],
    ]
    out = processor.apply_chat_template_with_labels(chats, processor_kwargs={"padding": True, "padding_side": "left"})
    closing_ids = [tokenizer.convert_tokens_to_ids(closing)] if len(closing) > 1 else ids_of(closing)
    for row, answer in enumerate(["Answer one", "Two"]):
        ids, labels, mask = (out[k][row].tolist() for k in ("input_ids", "labels", "attention_mask"))
        assert [t for t, l in zip(ids, labels) if l != IGNORE_INDEX] == ids_of(answer) + closing_ids
        assert all(l == IGNORE_INDEX for l, m in zip(labels, mask) if m == 0)
    assert out["attention_mask"][0, 0] == 0 or out["attention_mask"][1, 0] == 0
    assert out["pixel_values"].shape == (2, 3, 16, 16)


# --------------------------------------------------------------------------------------------------
# Save / load and self-containment


def test_processor_save_load_round_trip(tmp_path):
    processor = make_processor(seq=7, size=20, template="llama3")
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == processor.chat_template
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["image_seq_length"] == 7 and config["template_name"] == "llama3"
    assert config["image_token"] == "<image>"
    assert config["image_processor"]["image_processor_type"] == "EagleImageProcessor"
    reloaded = EagleProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.image_processor, EagleImageProcessor)
    assert reloaded.image_seq_length == 7 and reloaded.template_name == "llama3"
    assert reloaded.chat_template == processor.chat_template
    assert reloaded.image_token_id == processor.image_token_id
    image = Image.fromarray(rgb())
    text = "<|begin_of_text|>hi<image>there"
    a = processor(images=image, text=text, return_tensors="pt")
    b = reloaded(images=image, text=text, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    assert reloaded.apply_chat_template(messages, add_generation_prompt=True) == \
        processor.apply_chat_template(messages, add_generation_prompt=True)


def test_processing_files_are_self_contained(tmp_path):
    for path in PROCESSING_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{path.name}: relative import beyond the package"
                assert not (node.module or "").startswith("eagle_hf"), f"{path.name} imports {node.module}"
                assert node.level == 0 or "." not in (node.module or ""), f"{path.name}: nested relative import"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("eagle_hf") for alias in node.names), path.name
    # Copied flat into another package (as trust_remote_code does), the modules still import and work.
    package = tmp_path / "flatcopy_eagle_processing"
    package.mkdir()
    for name in ("chat_templates.py", "image_processing_eagle.py", "processing_eagle.py"):
        shutil.copy(PROCESSING_DIR / name, package / name)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("flatcopy_eagle_processing.processing_eagle")
        processor = module.EagleProcessor(None, char_tokenizer(), image_seq_length=2, template_name="plain")
        assert processor(text="<image>x", images=Image.fromarray(rgb()))["input_ids"][0][:3] == [
            1, processor.image_token_id, processor.image_token_id]
    finally:
        sys.path.remove(str(tmp_path))
        for key in [k for k in sys.modules if k.startswith("flatcopy_eagle_processing")]:
            del sys.modules[key]

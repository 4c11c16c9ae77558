"""Processor and image-processor conventions of transformers, checked as transformers checks its own
processors: `ProcessingKwargs` routing (flat or per modality, conflicts refused, the tokenizer's saved
defaults honoured), type annotations, save/load; both image-processor backends and which one the Auto
classes pick."""

import json
import typing

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import ImageInput
from transformers.processing_utils import Unpack
from transformers.tokenization_utils_base import TextInput

import eagle_hf  # noqa: F401  (registers the Auto classes)
from eagle_hf import preset_config
from eagle_hf.processing import (
    EagleImageProcessor,
    EagleImageProcessorTorchvision,
    EagleProcessor,
    EagleProcessorKwargs,
)
from eagle_hf.convert import image_processor_kwargs
from eagle_hf.testing import build_tiny_processor, build_tiny_tokenizer, make_image
from eagle_hf.testing.parity import cached_original_checkpoint, find_parity_dir, list_fixtures, run_parity

BACKENDS = {"pil": EagleImageProcessor, "torchvision": EagleImageProcessorTorchvision}


class EagleProcessorTester:
    """A tiny processor (word-level tokenizer whose last id is ``<image>``, 64 px images, 16 tokens
    per image) and a batch of two prompts of different lengths, one image each."""

    def __init__(self, **config_kwargs):
        self.config = preset_config("tiny", **config_kwargs)

    def get_processor(self, **tokenizer_kwargs):
        processor = build_tiny_processor(self.config)
        if tokenizer_kwargs:
            tokenizer = build_tiny_tokenizer(self.config.text_config.vocab_size, **tokenizer_kwargs)
            processor = EagleProcessor(image_processor=processor.image_processor, tokenizer=tokenizer,
                                       image_token=processor.image_token,
                                       image_seq_length=processor.image_seq_length, template_name="vicuna_v1")
        return processor

    def prepare_inputs(self):
        texts = ["<image> what is this", "a red cat <image> on the left of the big house"]
        return texts, [make_image(40, 64, seed=1), make_image(80, 48, seed=2)]


@pytest.fixture(scope="module")
def tester():
    return EagleProcessorTester()


class TestEagleProcessor:
    def test_call_is_typed_with_processing_kwargs(self):
        annotations = EagleProcessor.__call__.__annotations__
        assert annotations["images"] == ImageInput | None
        assert TextInput in typing.get_args(annotations["text"])
        assert annotations["kwargs"] == Unpack[EagleProcessorKwargs]
        assert EagleProcessor.valid_processor_kwargs is EagleProcessorKwargs
        assert "pad_to_square" in typing.get_type_hints(EagleProcessorKwargs.__annotations__["images_kwargs"])

    def test_flat_and_per_modality_kwargs_are_the_same(self, tester):
        processor = tester.get_processor()
        texts, images = tester.prepare_inputs()
        flat = processor(images=images, text=texts, padding="max_length", max_length=40, padding_side="right",
                         pad_to_square=False, return_tensors="pt")
        nested = processor(images=images, text=texts, text_kwargs={"padding": "max_length", "max_length": 40,
                                                                   "padding_side": "right"},
                           images_kwargs={"pad_to_square": False}, return_tensors="pt")
        assert flat["input_ids"].shape == (2, 40)
        assert torch.all(flat["attention_mask"][:, -1] == 0)  # right padding
        for key in ("input_ids", "attention_mask", "pixel_values"):
            assert torch.equal(flat[key], nested[key]), key
        padded = processor(images=images, text=texts, return_tensors="pt", padding=True)["pixel_values"]
        assert not torch.equal(padded, flat["pixel_values"])  # pad_to_square=False really reached the images

    @pytest.mark.parametrize("flat, nested", [
        ({"padding": True}, {"text_kwargs": {"padding": "max_length"}}),
        ({"max_length": 30}, {"text_kwargs": {"max_length": 40}}),
        ({"pad_to_square": True}, {"images_kwargs": {"pad_to_square": False}}),
    ])
    def test_a_keyword_given_twice_is_refused(self, tester, flat, nested):
        processor = tester.get_processor()
        texts, images = tester.prepare_inputs()
        with pytest.raises(ValueError, match="passed two times"):
            processor(images=images, text=texts, **flat, **nested)

    def test_the_tokenizers_saved_defaults_are_honoured(self, tester, tmp_path):
        texts, images = tester.prepare_inputs()
        tokenizer = build_tiny_tokenizer(tester.config.text_config.vocab_size, padding_side="right")
        tokenizer.init_kwargs.update(padding="max_length", max_length=48)
        base = tester.get_processor()
        processor = EagleProcessor(image_processor=base.image_processor, tokenizer=tokenizer,
                                   image_seq_length=base.image_seq_length, template_name="vicuna_v1")
        processor.save_pretrained(tmp_path)
        for loaded in (processor, AutoProcessor.from_pretrained(tmp_path)):
            out = loaded(images=images, text=texts, return_tensors="pt")
            assert out["input_ids"].shape == (2, 48)  # padding="max_length", max_length=48 from the tokenizer
            assert torch.all(out["attention_mask"][:, -1] == 0)  # its padding_side too
            # an explicit argument still wins over the saved default
            assert loaded(images=images, text=texts, padding="longest", return_tensors="pt")["input_ids"].shape[1] < 48

    def test_apply_chat_template_passes_processor_kwargs(self, tester):
        processor = tester.get_processor()
        messages = [[{"role": "user", "content": [{"type": "image", "image": image},
                                                  {"type": "text", "text": "what is this"}]}]
                    for image in tester.prepare_inputs()[1]]
        out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt", processor_kwargs={"padding": "max_length",
                                                                                   "max_length": 64})
        assert out["input_ids"].shape == (2, 64)
        assert out["pixel_values"].shape == (2, 3, 64, 64)
        assert int((out["input_ids"] == processor.image_token_id).sum()) == 2 * processor.image_seq_length


class EagleImageProcessingTester:
    """Random RGB images of several shapes (wide, tall, square) at the tiny 64 px input."""

    size = 64

    def prepare_images(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        shapes = [(50, 80), (90, 36), (64, 64), (50, 80)]
        return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]

    def get_processor(self, backend: str, **kwargs):
        return BACKENDS[backend](size=self.size, **kwargs)


class TestEagleImageProcessor:
    @pytest.mark.parametrize("backend", list(BACKENDS))
    def test_backend_classes(self, backend):
        processor = EagleImageProcessingTester().get_processor(backend)
        assert processor.backend == backend
        assert isinstance(processor, PilBackend if backend == "pil" else TorchvisionBackend)

    @pytest.mark.parametrize("pad_to_square", [True, False])
    def test_torchvision_equals_pil_within_one_uint8_level(self, pad_to_square):
        tester = EagleImageProcessingTester()
        images = tester.prepare_images()
        pil, tv = (tester.get_processor(b, pad_to_square=pad_to_square) for b in BACKENDS)
        for image in images:
            a = pil.square_uint8(image).astype(np.int16)
            b = tv.square_uint8(image).astype(np.int16)
            assert a.shape == b.shape == (64, 64, 3)
            assert np.abs(a - b).max() <= 1
        by_pil = pil(images, return_tensors="pt")["pixel_values"]
        by_tv = tv(images, return_tensors="pt")["pixel_values"]
        assert by_pil.shape == by_tv.shape == (len(images), 3, 64, 64) and by_tv.dtype == torch.float32
        one_level = torch.tensor(1 / 255 / np.asarray(pil.image_std), dtype=torch.float32)[:, None, None]
        assert torch.all((by_pil - by_tv).abs() <= one_level * 1.0001)
        # Where the uint8 values agree, the floats are bit-identical (same value table).
        same = torch.from_numpy(np.stack([pil.square_uint8(i) == tv.square_uint8(i) for i in images])).permute(0, 3, 1, 2)
        assert same.float().mean() > 0.5
        assert torch.equal(by_pil[same], by_tv[same])

    def test_torchvision_batches_like_single_images(self):
        tester = EagleImageProcessingTester()
        images = tester.prepare_images(seed=3)
        tv = tester.get_processor("torchvision")
        batch = tv(images, return_tensors="pt")["pixel_values"]
        for i, image in enumerate(images):
            assert torch.equal(tv(image, return_tensors="pt")["pixel_values"][0], batch[i])

    def test_auto_image_processor_picks_pil_by_default(self, tmp_path):
        """A deliberate difference from transformers' default (torchvision when installed): the PIL
        backend is what reproduces the original preprocessing exactly."""
        EagleImageProcessor(size=64).save_pretrained(tmp_path)
        assert type(AutoImageProcessor.from_pretrained(tmp_path)) is EagleImageProcessor
        chosen = AutoImageProcessor.from_pretrained(tmp_path, backend="torchvision")
        assert type(chosen) is EagleImageProcessorTorchvision and chosen.size == {"shortest_edge": 64}
        assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is EagleImageProcessor
        # a saved torchvision processor reloads as one
        other = tmp_path / "tv"
        EagleImageProcessorTorchvision(size=64).save_pretrained(other)
        assert type(AutoImageProcessor.from_pretrained(other)) is EagleImageProcessorTorchvision

    def test_processor_loads_either_backend(self, tmp_path):
        processor = build_tiny_processor(preset_config("tiny"))
        processor.save_pretrained(tmp_path)
        assert type(AutoProcessor.from_pretrained(tmp_path).image_processor) is EagleImageProcessor
        loaded = AutoProcessor.from_pretrained(tmp_path, backend="torchvision")
        assert type(loaded.image_processor) is EagleImageProcessorTorchvision
        texts, images = EagleProcessorTester().prepare_inputs()
        a = processor(images=images, text=texts, padding=True, return_tensors="pt")
        b = loaded(images=images, text=texts, padding=True, return_tensors="pt")
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert (a["pixel_values"] - b["pixel_values"]).abs().max() < 0.02


@pytest.mark.skipif(find_parity_dir() is None, reason="shared/parity not found (set EAGLE_HF_SHARED_DIR)")
def test_torchvision_backend_on_the_parity_fixture():
    """Why PIL is the default: on the single-CLIP fixture the torchvision resize is one uint8 level
    off at a few hundred values, which moves the CLIP features by ~5e-2 (the PIL backend is exact);
    the next-token logits stay within 5e-3 and their argmax is unchanged."""
    case = min(list_fixtures(find_parity_dir()),
               key=lambda p: json.loads(p.read_text())["manifest"]["state_dict"]["num_elements"])
    model = AutoModelForImageTextToText.from_pretrained(cached_original_checkpoint(case)).eval()
    exact = run_parity(case, model)
    exact.raise_if_failed()
    assert exact["uint8 square image"].max_abs_error == 0
    torchvision = EagleImageProcessorTorchvision(**image_processor_kwargs(model.config))
    report = run_parity(case, model, image_processor=torchvision,
                        bounds={"default": (0.2, 0.05), "logits": (5e-3, 5e-3)})
    square = report["uint8 square image"]
    assert not square.passed and square.max_abs_error == 1  # one level, not zero, not more
    assert all(stage.passed for stage in report.stages if stage is not square), report.format()

"""Tiny, fully offline eagle-hf checkpoints for tests, examples and the README demo.

Nothing can be downloaded here, so a complete release folder (weights, processor, tokenizer,
chat template, generation config) is built from the ``tiny`` preset and a word-level tokenizer
made in memory. Its vocabulary exactly fills the tiny LLM's embedding table, so whatever a
randomly initialised model generates decodes to readable words, and ``<image>`` takes the
last id, which is what the preset uses as ``image_token_id``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GenerationConfig, PreTrainedTokenizerFast

from ..processing import IMAGE_TOKEN
from ..training.tokenizer import SPECIAL_TOKENS

# Words of the released chat templates (so a rendered prompt has few <unk>), then everyday words.
_WORDS = """
. , ? ! : ; ' " ( ) - / |
A a chat between curious user and an artificial intelligence assistant The the gives helpful detailed
polite answers to s questions USER ASSISTANT SYSTEM system user assistant im_start im_end
What what is in this image picture photo Describe describe How how many color colour of are there
it on with for at by from as or but not no yes one two three four five red green blue yellow black
white gray grey orange purple pink brown cat dog car tree house sky sun water road person people
man woman child table chair sofa book cup window door left right top bottom middle small large big
little bright dark light shape square circle line text word letter number see shows show can could
would will do does did be been being have has had was were I you he she we they them its my your
our their here where when why who which that these those some any all each every more most very
""".split()


def build_tiny_tokenizer(vocab_size: int = 256, model_max_length: int = 512,
                         padding_side: str = "left", add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with exactly ``vocab_size`` ids; ``<image>`` is the last one.

    Ids 0..3 are unk/bos/eos/pad. Left padding is the default because the folder is used for
    batched generation (the image-text-to-text pipeline pads with the tokenizer's side). With
    ``add_bos`` it puts ``<s>`` in front of every text, as the Llama/Vicuna tokenizers of the
    released models do.
    """
    words = list(dict.fromkeys(_WORDS))
    room = vocab_size - len(SPECIAL_TOKENS) - 1
    if room < 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for words")
    # Filler words keep every id decodable whatever the table size.
    words = (words + [f"w{i}" for i in range(room)])[:room] if len(words) < room else words[:room]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS.values(), *words, IMAGE_TOKEN])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        bos = SPECIAL_TOKENS["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, padding_side=padding_side,
        extra_special_tokens={"image_token": IMAGE_TOKEN}, **SPECIAL_TOKENS,
    )
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != vocab_size - 1 or len(tokenizer) != vocab_size:
        raise AssertionError("tiny tokenizer layout is broken")  # guards the id contract above
    return tokenizer


def make_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A deterministic RGB test image: smooth gradients plus seeded noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                     np.full_like(x, (seed * 53) % 256, dtype=float)], axis=-1)
    noise = rng.integers(0, 48, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def build_tiny_processor(config, template_name: str = "vicuna_v1", chat_template: str | None = None,
                         model_max_length: int | None = None, add_bos: bool = False):
    """`EagleProcessor` for a tiny config: an image processor at the mixture's input size and the
    offline tokenizer. ``template_name``: one of the original conversation templates;
    ``chat_template``: a Jinja string that replaces it."""
    from ..processing import EagleImageProcessor, EagleProcessor

    tokenizer = build_tiny_tokenizer(
        config.text_config.vocab_size, model_max_length=model_max_length or config.max_sequence_length,
        add_bos=add_bos)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != config.image_token_id:
        raise ValueError(f"config.image_token_id {config.image_token_id} is not the tokenizer's <image> id")
    image_processor = EagleImageProcessor(size=config.vision_config.image_size,
                                          image_mean=list(config.vision_config.image_mean),
                                          image_std=list(config.vision_config.image_std))
    return EagleProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                          image_token=IMAGE_TOKEN, image_seq_length=config.image_seq_length,
                          template_name=template_name)


def build_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, experts: list[str] | None = None,
                          template_name: str = "vicuna_v1", max_position_embeddings: int = 512,
                          max_new_tokens: int = 16, model_card: bool = False, add_bos: bool = False):
    """Save a complete tiny eagle-hf release to ``path`` and return ``(model, processor)``.

    The folder holds config.json, model.safetensors, the processor (image processor,
    tokenizer, chat template) and generation_config.json; with ``model_card`` also README.md.
    ``add_bos``: the tokenizer adds ``<s>`` like the released Llama-family tokenizers.
    """
    from .. import EagleVLForConditionalGeneration, preset_config

    config = preset_config(
        "tiny", experts=experts,
        text_config={**_tiny_text(), "max_position_embeddings": max_position_embeddings},
    )
    tokenizer_ids = build_tiny_tokenizer(config.text_config.vocab_size)
    config.text_config.bos_token_id = tokenizer_ids.bos_token_id
    config.text_config.eos_token_id = tokenizer_ids.eos_token_id
    config.text_config.pad_token_id = tokenizer_ids.pad_token_id
    torch.manual_seed(seed)
    model = EagleVLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer_ids.bos_token_id, eos_token_id=tokenizer_ids.eos_token_id,
        pad_token_id=tokenizer_ids.pad_token_id, max_new_tokens=max_new_tokens, do_sample=False,
    )
    processor = build_tiny_processor(config, template_name=template_name, add_bos=add_bos)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if model_card:
        from ..hub import write_model_card

        write_model_card(path, model=model, base_models=None)
    return model, processor


def _tiny_text() -> dict:
    from ..modeling.presets import TINY_TEXT

    return dict(TINY_TEXT)

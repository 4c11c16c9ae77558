"""The ``tiny`` model of ``eagle-hf train --model tiny``: random weights, a tokenizer learnt from
the training text, and a processor tying them together, all saved with the model."""

import re
from collections.abc import Iterable

import torch

from ..modeling import EagleVLConfig, EagleVLForConditionalGeneration
from ..modeling.presets import tiny_train_config
from ..processing import EagleImageProcessor, EagleProcessor, get_template, render
from .data import Example
from .tokenizer import build_tokenizer

# chatml keeps multi-turn prompts short (the Vicuna system text would triple a tiny sample's
# length) and its <|im_end|> marker gives the model an unambiguous end of answer.
TINY_TEMPLATE = "chatml_direct"
TOKENIZER_SAMPLE_ROWS = 20000


def template_markers(template: str) -> list[str]:
    """``<|...|>`` markers of a conversation template, to keep whole in a learnt vocabulary."""
    t = get_template(template)
    strings = [t.system_prefix, t.sep, t.sep2 or "", *t.roles]
    return sorted({m for s in strings for m in re.findall(r"<\|[^|]+\|>", s)})


def build_tiny(examples: Iterable[Example], template: str = TINY_TEMPLATE, vocab_size: int = 1024,
               seed: int = 0, config: EagleVLConfig | None = None) -> tuple[EagleVLForConditionalGeneration, EagleProcessor]:
    """A randomly initialised ``tiny-train`` EAGLE (or ``config``: any other EAGLE config, whose
    vocabulary size and special token ids are then set from the tokenizer) and its processor, the
    tokenizer learnt from the rendered conversations of (up to 20,000 of) ``examples``."""
    texts = []
    for k, ex in enumerate(examples):
        if k >= TOKENIZER_SAMPLE_ROWS:
            break
        texts.append(render(template, ex.messages))
    if not texts:
        raise ValueError("no training text to learn the tiny model's tokenizer from")
    config_probe = config if config is not None else tiny_train_config()
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size, extra_special_tokens=template_markers(template),
                                model_max_length=config_probe.text_config.max_position_embeddings)
    vision = config_probe.vision_config
    processor = EagleProcessor(
        image_processor=EagleImageProcessor(size=vision.image_size, image_mean=list(vision.image_mean),
                                            image_std=list(vision.image_std)),
        tokenizer=tokenizer, image_seq_length=vision.num_image_tokens, template_name=template)
    tok = processor.tokenizer
    ids = dict(image_token_id=processor.image_token_id, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if config is None:
        config = tiny_train_config(vocab_size=len(tok), **ids)
    else:
        values = config.to_dict()
        values["text_config"]["vocab_size"] = len(tok)
        config = EagleVLConfig.from_dict({**values, **ids})
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config.text_config, key, getattr(tok, key))
    torch.manual_seed(seed)
    model = EagleVLForConditionalGeneration(config)
    stops = [tok.eos_token_id] + [tok.convert_tokens_to_ids(m) for m in template_markers(template) if "end" in m]
    model.generation_config.eos_token_id = list(dict.fromkeys(stops))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model, processor

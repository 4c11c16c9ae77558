"""Processor for EAGLE: image processor + tokenizer + the original conversation templates.

Tokenisation reproduces the original ``tokenizer_image_token`` (``eagle/mm_utils.py``): the text is split
on the image token string, every chunk is tokenised on its own with the tokenizer's own special-token
behaviour, the BOS the tokenizer put in front of every chunk after the first is dropped, and the chunks
are joined with the image placeholder. The only difference is the placeholder itself: instead of one
``-200`` sentinel per image, ``image_seq_length`` copies of the image token id are inserted, which is
what a transformers-native model scatters its image features into (EAGLE always makes 1024 tokens).

The image token id is the tokenizer's id for ``image_token``. The original vocabularies have no such
token, so when the tokenizer lacks it, it is **added to the given tokenizer** as a special token (its
id is then ``len(tokenizer) - 1``, e.g. 32000 for Vicuna); the model's ``image_token_id`` must match it.
Image positions are replaced by features before any embedding lookup, so the embedding matrix does not
need a row for it.
"""

from typing import Any

import numpy as np
from tokenizers import AddedToken

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import PreTokenizedInput, TextInput
from transformers.utils import logging

from .chat_templates import IMAGE_TOKEN, get_template, jinja_chat_template, resolve_template_name
from .image_processing_eagle import (
    EagleImageProcessor,
    EagleImageProcessorKwargs,
    EagleImageProcessorTorchvision,
    flatten_images,
)


logger = logging.get_logger(__name__)

__all__ = ["EagleProcessor", "EagleProcessorKwargs", "IGNORE_INDEX"]

IGNORE_INDEX = -100

# Text keywords of transformers' `TextKwargs` that have no effect here (attention masks are always
# returned).
_IGNORED_TEXT_KWARGS = {"return_token_type_ids", "return_attention_mask",
                        "verbose", "return_length", "return_overflowing_tokens", "return_special_tokens_mask",
                        "stride", "is_split_into_words", "text_pair", "text_target", "text_pair_target"}


class EagleProcessorKwargs(ProcessingKwargs, total=False):
    """Processor keywords, routed by transformers' `ProcessorMixin._merge_kwargs`: flat keywords go to
    the modality that accepts them, ``text_kwargs`` / ``images_kwargs`` dicts are the explicit form,
    a keyword given both ways is refused, and the tokenizer's saved init keywords are the defaults."""

    images_kwargs: EagleImageProcessorKwargs


def _truncation_enabled(truncation: Any) -> bool:
    if truncation is None or truncation is False:
        return False
    if truncation is True:
        return True
    value = getattr(truncation, "value", truncation)
    return value not in ("do_not_truncate", False)


def _padding_mode(padding: Any) -> str | None:
    if padding is None or padding is False:
        return None
    if padding is True:
        return "longest"
    value = getattr(padding, "value", padding)
    if value in ("longest", "max_length"):
        return value
    if value == "do_not_pad":
        return None
    raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")


def _tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` puts the BOS token in front by itself (Llama/Vicuna do, Qwen does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


class EagleProcessor(ProcessorMixin):
    r"""Builds EAGLE model inputs (``input_ids``, ``attention_mask``, ``pixel_values``).

    Args:
        image_processor ([`EagleImageProcessor`], *optional*): defaults to `EagleImageProcessor()`.
        tokenizer ([`PreTrainedTokenizerBase`]): the language model's tokenizer (required).
        chat_template (`str`, *optional*): Jinja chat template; generated from `template_name` when omitted.
        image_token (`str`, defaults to `"<image>"`): the placeholder string in prompts.
        image_seq_length (`int`, defaults to 1024): image tokens inserted per image (32x32 grid).
        template_name (`str`, *optional*): one of the original conversation templates (`vicuna_v1`,
            `llava_v1`, `llama3`, `yi_34b_chatml_direct`, `plain`, ... see `chat_templates.list_templates()`).

    Truncation rule (``truncation=True`` with ``max_length``): tokens are removed from the end only, and
    only text tokens; if the cut would fall inside an image span or drop an image entirely a
    ``ValueError`` is raised instead, because a partial image cannot be fed to the model.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token=IMAGE_TOKEN,
        image_seq_length=1024,
        template_name=None,
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("EagleProcessor needs a tokenizer")
        if image_processor is None:
            image_processor = EagleImageProcessor()
        if not isinstance(image_seq_length, int) or image_seq_length < 1:
            raise ValueError(f"image_seq_length must be a positive int, got {image_seq_length!r}")
        self.adds_bos = _tokenizer_adds_bos(tokenizer)
        if template_name is not None:
            get_template(template_name)  # fail early on unknown names
            if chat_template is None:
                chat_template = jinja_chat_template(template_name, image_token=image_token, bos_token=self.adds_bos)
        self.image_token = image_token
        self.image_seq_length = image_seq_length
        self.template_name = template_name
        self.image_token_id = self._ensure_image_token(tokenizer, image_token)
        self._chat_add_special_tokens = None
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @staticmethod
    def _ensure_image_token(tokenizer, image_token: str) -> int:
        vocab = tokenizer.get_vocab()
        if image_token not in vocab:
            tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
            logger.info(f"added {image_token!r} to the tokenizer as a special token (id {len(tokenizer) - 1})")
        token_id = tokenizer.convert_tokens_to_ids(image_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"could not obtain a token id for the image token {image_token!r}")
        return token_id

    # ------------------------------------------------------------------------------------------------
    # Public API

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    valid_processor_kwargs = EagleProcessorKwargs

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | PreTokenizedInput | list[TextInput] | list[PreTokenizedInput] | None = None,
        **kwargs: Unpack[EagleProcessorKwargs],
    ) -> BatchFeature:
        r"""Tokenise ``text`` like the original ``tokenizer_image_token`` and preprocess ``images``.

        Args:
            images: one image, a flat list (assigned to the placeholders in reading order across the batch),
                or a nested list with one list of images per text.
            text (`str` or `list[str]`): prompts containing one ``image_token`` per image.

        Keyword arguments (`EagleProcessorKwargs`, flat or as ``text_kwargs=`` / ``images_kwargs=``; a keyword
        given both ways is a ``ValueError``; the tokenizer's saved init keywords, e.g. ``padding="max_length"``,
        are the defaults):
            padding (`bool` or `str`): `True`/`"longest"` or `"max_length"`; uses the tokenizer's pad token.
            truncation (`bool`), max_length (`int`): see the class docstring for the rule.
            return_tensors (`"pt"` or `"np"`), padding_side (`"left"` / `"right"`, defaults to the tokenizer's),
            pad_to_multiple_of (`int`).
            add_special_tokens (`bool`): passed to the tokenizer for every chunk, as the original did.
            return_offsets_mapping (`bool`): also return per-token ``(start, end)`` character offsets in the
                given text (image tokens point at their placeholder, added special tokens are ``(0, 0)``).
            return_mm_token_type_ids (`bool`): also return ``mm_token_type_ids`` (1 at image tokens).
            image processor keywords (`pad_to_square`, `size`, ...): passed to the image processor.

        Returns:
            `BatchFeature` with ``input_ids``, ``attention_mask`` (when text is given) and ``pixel_values``
            (when images are given).
        """
        for modality in ("videos", "audio", "audios"):
            # Harnesses (lmms-eval, pipelines) pass empty lists for modalities they do not use.
            value = kwargs.pop(modality, None)
            if value is not None and not (isinstance(value, (list, tuple)) and not any(value)):
                raise ValueError(f"EAGLE models take images and text only; got {modality}")
        merged = self._merge_kwargs(EagleProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        padding = text_kwargs.pop("padding", False)
        truncation = text_kwargs.pop("truncation", None)
        max_length = text_kwargs.pop("max_length", None)
        return_tensors = text_kwargs.pop("return_tensors", None)
        padding_side = text_kwargs.pop("padding_side", None)
        add_special_tokens = text_kwargs.pop("add_special_tokens", True)
        if self._chat_add_special_tokens is not None:
            add_special_tokens = self._chat_add_special_tokens
        if text_kwargs.pop("sanitize_control_tokens", False):
            raise ValueError("EagleProcessor does not support sanitize_control_tokens")
        return_offsets = bool(text_kwargs.pop("return_offsets_mapping", False))
        return_mm_types = bool(merged.get("return_mm_token_type_ids") or text_kwargs.pop("return_mm_token_type_ids",
                                                                                           False))
        return_replacements = bool(merged.get("return_text_replacement_offsets")
                                   or text_kwargs.pop("return_text_replacement_offsets", False))
        pad_to_multiple_of = text_kwargs.pop("pad_to_multiple_of", None)
        for name in _IGNORED_TEXT_KWARGS:
            text_kwargs.pop(name, None)
        if text_kwargs:
            logger.warning_once(f"EagleProcessor ignores the text keyword arguments {sorted(text_kwargs)}")

        if text is None and images is None:
            raise ValueError("EagleProcessor needs `text`, `images` or both")

        data: dict[str, Any] = {}
        texts = None
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("`text` must be a string or a list of strings")
        flat_images = self._match_images(texts, images)

        if flat_images:
            images_kwargs["return_tensors"] = images_kwargs.get("return_tensors", return_tensors)
            data.update(self.image_processor(flat_images, **images_kwargs))

        if texts is not None:
            encoded = [self._encode(t, add_special_tokens, return_offsets) for t in texts]
            if _truncation_enabled(truncation):
                limit = max_length if max_length is not None else self._model_max_length()
                if limit is not None:
                    encoded = [self._truncate(enc, limit, index) for index, enc in enumerate(encoded)]
            data.update(self._pad(encoded, padding, max_length, pad_to_multiple_of, padding_side,
                                  return_tensors, return_offsets, return_mm_types))
            if return_replacements:
                data["text_replacement_offsets"] = [self._replacements(enc) for enc in encoded]

        return BatchFeature(data=data, tensor_type=return_tensors,
                            skip_tensor_conversion=["offset_mapping", "text_replacement_offsets"])

    def _replacements(self, encoding: dict[str, Any]) -> list[dict[str, Any]]:
        """``text_replacement_offsets`` entries (the transformers processor contract, read by vLLM's
        Transformers backend and by ``apply_chat_template``'s assistant masks): each placeholder and the
        text it stands for. The ids are built without expanding the text, so offsets stay in the
        coordinates of the text as given and ``new_span`` equals ``span``."""
        replacement = self.image_token * self.image_seq_length
        return [{"type": "image", "span": span, "new_span": span, "text": self.image_token, "replacement": replacement}
                for span in encoding["placeholders"]]

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """`ProcessorMixin.apply_chat_template`, keeping the original's special-token behaviour.

        transformers turns ``add_special_tokens`` off when the rendered prompt starts with the BOS token.
        The original always tokenised with the tokenizer's defaults, so the ``llama3`` template (whose text
        starts with ``<|begin_of_text|>``) gave two BOS tokens, and the released models were trained that
        way. Here the tokenizer defaults are kept unless ``processor_kwargs={"add_special_tokens": ...}``
        says otherwise.
        """
        processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
        choice = processor_kwargs.pop("add_special_tokens", kwargs.pop("add_special_tokens", True))
        self._chat_add_special_tokens = bool(choice)
        try:
            return super().apply_chat_template(conversation, chat_template, processor_kwargs=processor_kwargs,
                                               **kwargs)
        finally:
            self._chat_add_special_tokens = None

    def _resolve_chat_template(self, chat_template):
        # A conversation template name ("llama3") means its Jinja source, not a literal template.
        named = isinstance(self.chat_template, dict) and chat_template in self.chat_template
        if isinstance(chat_template, str) and not named:
            chat_template = resolve_template_name(chat_template, self.image_token)
        return super()._resolve_chat_template(chat_template)

    def apply_chat_template_with_labels(
        self,
        conversation,
        chat_template=None,
        return_tensors="pt",
        processor_kwargs: dict | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise a chat for training: ``input_ids``, ``attention_mask``, ``labels`` (and ``pixel_values``).

        ``labels`` equal ``input_ids`` on the tokens of every assistant answer and its closing separator
        (``</s>``, ``<|eot_id|>``, ``<|im_end|>``, or ``"\\n"`` for ``plain``) and ``-100`` everywhere else
        (system, user turns, role headers, image tokens, padding) — the tokens the original training learned.
        A token is labelled when its character span overlaps an assistant span marked by
        ``{% generation %}`` in the chat template. Needs a fast (``tokenizers``) tokenizer for offsets.
        """
        out = self.apply_chat_template(
            conversation,
            chat_template=chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            add_generation_prompt=False,
            return_tensors=None,
            processor_kwargs=processor_kwargs,
            **kwargs,
        )
        masks = out.pop("assistant_masks")
        out["labels"] = [
            [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]
            for ids, mask in zip(out["input_ids"], masks)
        ]
        return BatchFeature(data=dict(out), tensor_type=return_tensors)

    def build_labels(
        self,
        text: str | list[str],
        assistant_spans: list[tuple[int, int]] | list[list[tuple[int, int]]],
        images=None,
        return_tensors="pt",
        **kwargs,
    ) -> BatchFeature:
        """Like :meth:`apply_chat_template_with_labels` for an already rendered prompt.

        ``assistant_spans`` are character spans of ``text`` (e.g. from
        ``chat_templates.render_with_spans``); one list of spans per text when ``text`` is a list.
        """
        texts = [text] if isinstance(text, str) else list(text)
        spans_per_text = [assistant_spans] if isinstance(text, str) else list(assistant_spans)
        if len(spans_per_text) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(spans_per_text)} lists of assistant spans")
        out = self(images=images, text=texts, return_offsets_mapping=True, return_tensors=None, **kwargs)
        offsets = out.pop("offset_mapping")
        labels = []
        for ids, sample_offsets, spans in zip(out["input_ids"], offsets, spans_per_text):
            row = []
            for token, (start, end) in zip(ids, sample_offsets):
                inside = start < end and token != self.image_token_id and any(
                    start < span_end and end > span_start for span_start, span_end in spans
                )
                row.append(token if inside else IGNORE_INDEX)
            labels.append(row)
        out["labels"] = labels
        return BatchFeature(data=dict(out), tensor_type=return_tensors)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Every image becomes ``image_seq_length`` tokens, whatever its size."""
        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.image_seq_length] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # The base class resolves the image processor through AutoImageProcessor, which only knows these
        # classes after registration; load them directly so that the class works on its own as well.
        # ``backend="pil"`` / ``"torchvision"`` picks the image-processor backend (default: the saved one).
        image_config = (processor_dict or {}).get("image_processor")
        saved_type = image_config.get("image_processor_type") if isinstance(image_config, dict) else None
        backends = {"pil": EagleImageProcessor, "torchvision": EagleImageProcessorTorchvision}
        if saved_type not in (None, *(c.__name__ for c in backends.values())):
            return super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)
        from transformers import AutoTokenizer

        backend = kwargs.pop("backend", None)
        if backend is not None and backend not in backends:
            raise ValueError(f"backend must be one of {sorted(backends)}, got {backend!r}")
        image_class = backends[backend] if backend else (
            EagleImageProcessorTorchvision if saved_type == EagleImageProcessorTorchvision.__name__
            else EagleImageProcessor)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        image_processor = image_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    # ------------------------------------------------------------------------------------------------
    # Internals

    def _model_max_length(self) -> int | None:
        limit = getattr(self.tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and limit < 10**9 else None

    def _match_images(self, texts: list[str] | None, images: Any) -> list[Any]:
        """Check placeholder and image counts; return the images flattened in placeholder order."""
        token = self.image_token
        if texts is None:
            return flatten_images(images)
        counts = [t.count(token) for t in texts]
        if images is None:
            if sum(counts):
                raise ValueError(
                    f"the text contains {sum(counts)} {token!r} placeholder(s) (per sample: {counts}) "
                    "but no images were given"
                )
            return []
        nested = isinstance(images, (list, tuple)) and any(isinstance(x, (list, tuple)) for x in images)
        if nested:
            if len(images) != len(texts):
                raise ValueError(
                    f"images were given as one list per text, but there are {len(images)} lists for {len(texts)} texts"
                )
            flat = []
            for index, (count, sample_images) in enumerate(zip(counts, images)):
                sample_flat = flatten_images(sample_images)
                if count != len(sample_flat):
                    raise ValueError(
                        f"text {index} contains {count} {token!r} placeholder(s) but {len(sample_flat)} image(s) "
                        "were given for it"
                    )
                flat.extend(sample_flat)
            return flat
        flat = flatten_images(images)
        if sum(counts) != len(flat):
            raise ValueError(
                f"the text contains {sum(counts)} {token!r} placeholder(s) (per sample: {counts}) but "
                f"{len(flat)} image(s) were given; every image needs exactly one placeholder"
            )
        return flat

    def _encode(self, text: str, add_special_tokens: bool, return_offsets: bool) -> dict[str, Any]:
        """``tokenizer_image_token`` with ``image_seq_length`` image ids per placeholder.

        A chat template may start the prompt with the BOS string (so that tools tokenising with
        ``add_special_tokens=False`` get it); when the tokenizer adds its own BOS that textual copy is
        dropped, so the ids are the same either way (and Llama-3's literal ``<|begin_of_text|>`` after
        it still gives the original's two BOS).
        """
        origin = 0
        bos_text = self.tokenizer.bos_token
        if add_special_tokens and bos_text and self.adds_bos and text.startswith(bos_text):
            origin = len(bos_text)
            text = text[origin:]
        chunks = text.split(self.image_token)
        call_kwargs = {"add_special_tokens": add_special_tokens}
        if return_offsets:
            call_kwargs["return_offsets_mapping"] = True
        encoding = self.tokenizer(chunks, **call_kwargs)
        chunk_ids = [list(ids) for ids in encoding["input_ids"]]
        chunk_offsets = encoding["offset_mapping"] if return_offsets else [[(0, 0)] * len(c) for c in chunk_ids]

        bos = self.tokenizer.bos_token_id
        skip = 1 if chunk_ids[0] and bos is not None and chunk_ids[0][0] == bos else 0
        ids: list[int] = [bos] if skip else []
        offsets: list[tuple[int, int]] = [(0, 0)] if skip else []
        image_spans: list[tuple[int, int]] = []
        placeholders: list[tuple[int, int]] = []
        chunk_start = origin  # offsets are in characters of the text as given
        for index, (cids, coffs) in enumerate(zip(chunk_ids, chunk_offsets)):
            if index > 0:
                placeholder = (chunk_start - len(self.image_token), chunk_start)
                placeholders.append(placeholder)
                image_spans.append((len(ids), len(ids) + self.image_seq_length))
                ids.extend([self.image_token_id] * self.image_seq_length)
                offsets.extend([placeholder] * self.image_seq_length)
                # Later chunks lose only a BOS the tokenizer put there (the original dropped their first
                # token whenever the first chunk began with BOS, a real token when that BOS was text).
                skip = 1 if add_special_tokens and self.adds_bos and cids[:1] == [bos] else 0
            ids.extend(cids[skip:])
            offsets.extend(
                (0, 0) if start == end else (start + chunk_start, end + chunk_start) for start, end in coffs[skip:]
            )
            chunk_start += len(chunks[index]) + len(self.image_token)
        return {"input_ids": ids, "offsets": offsets, "image_spans": image_spans, "placeholders": placeholders}

    def _truncate(self, encoding: dict[str, Any], max_length: int, index: int) -> dict[str, Any]:
        if len(encoding["input_ids"]) <= max_length:
            return encoding
        for number, (start, end) in enumerate(encoding["image_spans"]):
            if start >= max_length:
                raise ValueError(
                    f"truncating text {index} ({len(encoding['input_ids'])} tokens) to max_length={max_length} "
                    f"would remove image {number} (tokens {start}..{end - 1}); increase max_length or shorten the text"
                )
            if end > max_length:
                raise ValueError(
                    f"truncating text {index} ({len(encoding['input_ids'])} tokens) to max_length={max_length} "
                    f"would cut through image {number} (tokens {start}..{end - 1}); increase max_length or shorten "
                    "the text"
                )
        return {
            "input_ids": encoding["input_ids"][:max_length],
            "offsets": encoding["offsets"][:max_length],
            "image_spans": encoding["image_spans"],
            "placeholders": encoding["placeholders"],
        }

    def _pad(self, encoded, padding, max_length, pad_to_multiple_of, padding_side, return_tensors,
             return_offsets, return_mm_types) -> dict[str, Any]:
        lengths = [len(e["input_ids"]) for e in encoded]
        mode = _padding_mode(padding)
        target = None
        if mode == "longest":
            target = max(lengths)
        elif mode == "max_length":
            target = max_length if max_length is not None else self._model_max_length()
            if target is None:
                raise ValueError("padding='max_length' needs max_length")
            target = max(target, max(lengths))
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        if target is None and return_tensors is not None and len(set(lengths)) > 1:
            raise ValueError(
                f"the texts have different lengths {lengths}; pass padding=True to return tensors"
            )
        side = padding_side or getattr(self.tokenizer, "padding_side", "right") or "right"
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        pad_id = self.tokenizer.pad_token_id
        if target is not None and any(n < target for n in lengths) and pad_id is None:
            raise ValueError("padding needs a pad token, but the tokenizer has none (set tokenizer.pad_token)")

        out = {"input_ids": [], "attention_mask": []}
        if return_offsets:
            out["offset_mapping"] = []
        if return_mm_types:
            out["mm_token_type_ids"] = []
        for enc, n in zip(encoded, lengths):
            extra = (target - n) if target is not None else 0
            ids, mask = enc["input_ids"], [1] * n
            offsets = list(enc["offsets"])
            types = [1 if t == self.image_token_id else 0 for t in ids]
            if extra:
                pads = [pad_id] * extra
                zeros = [0] * extra
                if side == "left":
                    ids, mask, offsets, types = pads + ids, zeros + mask, [(0, 0)] * extra + offsets, zeros + types
                else:
                    ids, mask, offsets, types = ids + pads, mask + zeros, offsets + [(0, 0)] * extra, types + zeros
            out["input_ids"].append(ids)
            out["attention_mask"].append(mask)
            if return_offsets:
                out["offset_mapping"].append(offsets)
            if return_mm_types:
                out["mm_token_type_ids"].append(types)
        if return_tensors is not None:
            # Integer arrays, so that an empty text gives int64 ids (a list [[]] would become float).
            for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
                if key in out:
                    out[key] = np.asarray(out[key], dtype=np.int64).reshape(len(encoded), -1)
        return out

"""Generation helpers shared by the chat CLI, the web demo and the examples.

Everything a person-facing front end needs and the model itself does not decide: which device
and dtype to load on, checking that a folder really is an EAGLE model, reading images with
errors a person understands, a conversation that can take new images and be reset, the
context-length budget, and token streaming through `TextIteratorStreamer`.

Errors meant for the user are `ValueError`/`FileNotFoundError` with one-line messages; the CLI
prints them as they are and the demo shows them in the page.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .dtypes import parse_dtype
from .modeling.validation import check_processor_matches_model
from .processing.image_processing_eagle import one_line

# model_type values this package can run: native folders and original NVlabs checkpoints.
EAGLE_MODEL_TYPES = {"eagle_vl": "eagle-hf", "eagle_llama": "original EAGLE"}

class ContextLengthError(ValueError):
    """The conversation no longer fits the model's context window."""


# ----------------------------------------------------------------------------------------------
# device and dtype


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto``: the first CUDA device, else Apple MPS, else the CPU. Explicit names are checked
    so that asking for a missing accelerator fails up front rather than at the first matmul."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use --device cpu")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPUs that support it (float16 on older ones and MPS), float32 on the
    CPU, where half precision is slow and bfloat16 changes answers for no gain in speed."""
    if name in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    return parse_dtype(name)


# ----------------------------------------------------------------------------------------------
# model folders


def check_model_folder(path: str | Path) -> str:
    """Fail with a clear message unless ``path`` is a folder holding an EAGLE model; return its
    ``model_type``. Hub ids (``org/name``) that are not local folders are left to transformers."""
    p = Path(path).expanduser()
    if not p.exists():
        if _looks_like_hub_id(str(path)):
            return ""
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not p.is_dir():
        raise ValueError(f"{path} is a file; --model needs the folder that save_pretrained wrote")
    config_file = p / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json, so it is not a saved model folder "
                         "(expected an eagle-hf save_pretrained folder or an original EAGLE checkpoint)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{config_file} cannot be read as JSON: {one_line(err)}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in EAGLE_MODEL_TYPES:
        raise ValueError(f"{path} holds a {model_type!r} model, not an eagle-hf (eagle_vl) or original EAGLE "
                         "(eagle_llama) model")
    return model_type


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name


def load_model_and_processor(path: str | Path, device: str | torch.device | None = "auto",
                             dtype: str | torch.dtype | None = "auto", trust_remote_code: bool = False):
    """Load an EAGLE model and its processor for inference; returns ``(model, processor)``."""
    import eagle_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_type = check_model_folder(path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as err:
        hint = " (convert the original checkpoint with `eagle-hf convert` first)" if model_type == "eagle_llama" else ""
        raise ValueError(f"cannot load the processor of {path}{hint}: {one_line(err)}") from None
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"the processor in {path} has no chat template (chat_template.jinja); "
                         "save one with the processor so prompts are built the way the model was trained")
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype, device_map=str(device),
                                                            trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(f"cannot load the model weights of {path}: {one_line(err)}") from None
    check_processor_matches_model(processor, model.config, where=f"the processor in {path}")
    model.eval()
    return model, processor


# ----------------------------------------------------------------------------------------------
# images


def load_image(source: Any, name: str | None = None) -> Image.Image:
    """An RGB PIL image from a path, URL, bytes, array or PIL image: `processing.load_image_rgb`,
    the loader the processor itself uses (one-line errors; ``name`` is how messages call the file)."""
    from .processing import load_image_rgb

    return load_image_rgb(source, name=name)


def image_fingerprint(image: Image.Image) -> str:
    """Same pixels -> same key, whatever file name or format the image came with."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# generation settings and context budget


@dataclass
class GenerationSettings:
    """What a person may change between answers. ``None`` keeps the model's generation_config;
    ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    def validate(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self, model) -> dict[str, Any]:
        self.validate()
        kwargs: dict[str, Any] = {}
        default = getattr(model.generation_config, "max_new_tokens", None)
        kwargs["max_new_tokens"] = self.max_new_tokens or default or 512
        if self.temperature is not None:
            if self.temperature == 0:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(do_sample=True, temperature=float(self.temperature))
                if self.top_p is not None:
                    kwargs["top_p"] = float(self.top_p)
        elif self.top_p is not None:
            kwargs["top_p"] = float(self.top_p)
        return kwargs


def context_limit(model) -> int:
    config = model.config
    limit = getattr(config, "max_sequence_length", None)
    if limit is None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        limit = getattr(text, "max_position_embeddings", None)
    return int(limit)


def fit_new_tokens(model, prompt_length: int, max_new_tokens: int, images: int = 0) -> int:
    """How many new tokens fit after a prompt of ``prompt_length`` tokens; raises
    `ContextLengthError` if the prompt alone fills the context window."""
    limit = context_limit(model)
    if prompt_length >= limit:
        per_image = getattr(model.config, "image_seq_length", 0)
        detail = (f" (including {images} image{'s' if images > 1 else ''} of {per_image} tokens"
                  f"{' each' if images > 1 else ''})" if images and per_image else "")
        raise ContextLengthError(
            f"the conversation is {prompt_length} tokens long{detail}, but this model reads at most {limit}; "
            "start a new conversation (/reset or Clear) or use a shorter prompt"
        )
    return min(max_new_tokens, limit - prompt_length)


# ----------------------------------------------------------------------------------------------
# streaming


def stream_generate(model, tokenizer, inputs: dict[str, Any], stop_event: threading.Event | None = None,
                    **generate_kwargs) -> Iterator[str]:
    """Run ``model.generate`` in a thread and yield the decoded text as it arrives.

    Errors raised inside generation are re-raised here, after the text produced so far.
    ``stop_event``: set it to end generation early (the text so far is kept).
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []
    if stop_event is not None:
        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop_event.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        generate_kwargs["stopping_criteria"] = StoppingCriteriaList([_Stop()])

    def run():
        try:
            with torch.inference_mode():
                model.generate(**inputs, streamer=streamer, **generate_kwargs)
        except BaseException as err:  # noqa: BLE001  (handed to the consumer thread)
            errors.append(err)
            streamer.end()  # unblocks the consumer

    thread = threading.Thread(target=run, name="eagle-hf-generate", daemon=True)
    thread.start()
    try:
        for text in streamer:
            if text:
                yield text
    finally:
        if stop_event is not None and thread.is_alive():
            stop_event.set()
        thread.join()
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------------------------
# conversations


@dataclass
class Conversation:
    """A multi-turn chat in the Hugging Face message format.

    Images given with ``add_image`` wait for the next question and are attached to it. An image
    that is already part of the conversation is refused: sending the same picture twice costs a
    full image's worth of context and makes the model compare an image with itself.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    pending_images: list[Image.Image] = field(default_factory=list)
    image_keys: list[str] = field(default_factory=list)

    def add_image(self, source: Any, name: str | None = None) -> Image.Image:
        image = load_image(source, name=name)
        key = image_fingerprint(image)
        if key in self.image_keys:
            label = name or (source if isinstance(source, (str, Path)) else "this image")
            raise ValueError(f"image {label} is already part of this conversation; ask about it directly, "
                             "or start a new conversation (/reset or Clear) to use it again")
        self.image_keys.append(key)
        self.pending_images.append(image)
        return image

    def reset(self) -> None:
        self.messages.clear()
        self.pending_images.clear()
        self.image_keys.clear()

    @property
    def num_images(self) -> int:
        return len(self.image_keys)

    def user_message(self, text: str | None) -> dict[str, Any]:
        text = (text or "").strip()
        if not text:
            raise ValueError("the prompt is empty: type a question or instruction")
        content = [{"type": "image", "image": image} for image in self.pending_images]
        content.append({"type": "text", "text": text})
        return {"role": "user", "content": content}

    def commit(self, user_message: dict[str, Any], answer: str) -> None:
        self.messages.append(user_message)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        self.pending_images.clear()

    def discard_pending(self) -> None:
        """Forget images added since the last answer (e.g. after a failed turn)."""
        n = len(self.pending_images)
        if n:
            del self.image_keys[-n:]
            self.pending_images.clear()


def prepare_inputs(model, processor, messages: list[dict[str, Any]]):
    """Tokenised chat (with pixel values) on the model's device, from the processor's template."""
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
    )
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


class ChatEngine:
    """A loaded model + processor answering `Conversation` turns, one at a time."""

    def __init__(self, model, processor, settings: GenerationSettings | None = None):
        self.model = model
        self.processor = processor
        self.settings = settings or GenerationSettings()
        self.lock = threading.Lock()

    def prepare(self, conversation: Conversation, text: str | None,
                settings: GenerationSettings | None = None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """Validate a turn and build everything needed to answer it, without changing the
        conversation: ``(user_message, inputs, generate_kwargs)``."""
        settings = settings or self.settings
        gen = settings.generate_kwargs(self.model)
        message = conversation.user_message(text)
        inputs = prepare_inputs(self.model, self.processor, conversation.messages + [message])
        gen["max_new_tokens"] = fit_new_tokens(self.model, int(inputs["input_ids"].shape[-1]),
                                               gen["max_new_tokens"], images=conversation.num_images)
        return message, inputs, gen

    def stream(self, conversation: Conversation, text: str | None, settings: GenerationSettings | None = None,
               stop_event: threading.Event | None = None) -> Iterator[str]:
        """Yield the answer to ``text`` piece by piece; the turn is added to the conversation
        once the answer is complete (an error leaves the conversation as it was)."""
        message, inputs, gen = self.prepare(conversation, text, settings)
        pieces: list[str] = []
        with self.lock:
            for piece in stream_generate(self.model, self.processor.tokenizer, inputs, stop_event=stop_event, **gen):
                pieces.append(piece)
                yield piece
        conversation.commit(message, "".join(pieces).strip())

    def answer(self, conversation: Conversation, text: str | None, settings: GenerationSettings | None = None) -> str:
        return "".join(self.stream(conversation, text, settings)).strip()


def generate_batch(model, processor, conversations: list[list[dict[str, Any]]], **generate_kwargs) -> list[str]:
    """Answer several independent chats in one left-padded batch; returns the decoded answers."""
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    ).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        out = model.generate(**inputs, **generate_kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return processor.batch_decode(new, skip_special_tokens=True)

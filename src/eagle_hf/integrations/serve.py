"""OpenAI-compatible serving on transformers' own server (``transformers/cli/serving``, 5.25).

``transformers serve`` cannot load eagle-hf as it is: ``ModelLoader._load_model`` resolves the class
with ``getattr(transformers, config.architectures[0])`` (``cli/serving/model_manager.py:833``) and
``EngineClient.modality`` calls ``ModelLoader.get_model_modality`` (``model_manager.py:340``), which
looks the class name up in the static ``*_MAPPING_NAMES`` tables that ``AutoModel*.register`` does
not extend. transformers has no hook for either, so :func:`build_app` composes the same FastAPI app
that ``Serve.run`` builds (``build_server`` with transformers' handlers) around small subclasses:

* :class:`EagleModelLoader` loads eagle-hf folders through ``AutoModelForImageTextToText``. Since
  5.25 the model lives in a process of its own, started with ``spawn``, which receives the loader
  pickled: so the classes are defined at module level (importing them imports ``eagle_hf``, which
  registers the Auto classes in that process too), and this module needs the serving extras;
* :class:`EagleModelManager` reports eagle-hf models as vision-language models, so that
  ``image_url`` parts reach the processor;
* the handlers answer request errors with HTTP 400 and the reason: an image that cannot be read
  (upstream a 500) and a prompt longer than the model's ``max_sequence_length`` (upstream checks the
  LLM's ``max_position_embeddings``, which an eagle-hf ``model_max_length`` may lower).

Everything else (routing, the OpenAI schemas, streaming, generation in the model's process,
``force_model`` pinning, which answers a request for another model with a 400) is transformers'.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from packaging.version import Version

if Version(transformers.__version__) < Version("5.25"):
    # The serving internals changed shape in 5.25 (the model moved to a process of its own).
    raise ImportError(f"eagle-hf serve follows transformers 5.25's serving code; this is {transformers.__version__}: "
                      'pip install -U "transformers[serving]>=5.25"', name="transformers>=5.25")

from transformers.cli.serving.chat_completion import ChatCompletionHandler  # noqa: E402
from transformers.cli.serving.completion import CompletionHandler  # noqa: E402
from transformers.cli.serving.model_manager import ModelLoader, ModelManager  # noqa: E402
from transformers.cli.serving.response import ResponseHandler  # noqa: E402
from transformers.cli.serving.utils import Modality, parse_model_id, prompt_length  # noqa: E402

EAGLE_MODEL_TYPES = ("eagle_vl", "eagle_llama")


def _is_eagle(config) -> bool:
    return getattr(config, "model_type", None) in EAGLE_MODEL_TYPES


class EagleModelLoader(ModelLoader):
    def _load_model(self, model_id: str, tqdm_class=None, progress_callback=None):
        from transformers import AutoConfig, AutoModelForImageTextToText

        repo, revision, _ = parse_model_id(model_id)
        config = AutoConfig.from_pretrained(repo, revision=revision, trust_remote_code=self.trust_remote_code)
        if not _is_eagle(config):
            return super()._load_model(model_id, tqdm_class=tqdm_class, progress_callback=progress_callback)
        kwargs = {"revision": revision, "dtype": self.dtype, "device_map": self.device,
                  "trust_remote_code": self.trust_remote_code, "tqdm_class": tqdm_class,
                  "attn_implementation": self.attn_implementation,
                  "quantization_config": self.get_quantization_config()}
        return AutoModelForImageTextToText.from_pretrained(
            repo, **{key: value for key, value in kwargs.items() if value is not None}).eval()


class EagleModelManager(ModelManager):
    def get_engine(self, model: str | None):
        engine = super().get_engine(model)
        if _is_eagle(engine.model_config):
            # `modality` is a cached_property: setting it stores what computing it would have, had the
            # static tables known eagle-hf's class.
            engine.modality = Modality.VLM
        return engine


class _RequestErrors:
    """Request errors as ``ValueError``, which transformers' server answers with a 400 and the message. Both
    checks run before the response starts, so a streamed request gets the 400 too."""

    def render_messages(self, engine, messages: list[dict], body: dict) -> dict:
        try:
            return super().render_messages(engine, messages, body)
        except OSError as err:  # PIL's UnidentifiedImageError, a missing file
            raise ValueError(f"an image of the request could not be read: {err}") from err

    def _check_prompt_length(self, engine, inputs: dict) -> None:
        config = engine.model_config
        limit = getattr(config, "max_sequence_length", None) if _is_eagle(config) else None
        length = prompt_length(inputs)
        if limit is not None and length >= limit:  # no room left for an answer
            image_tokens = int((torch.as_tensor(inputs["input_ids"]) == config.image_token_id).sum())
            n_images = image_tokens // config.image_seq_length
            raise ValueError(f"the prompt is {length} tokens ({n_images} image(s) of {config.image_seq_length} tokens) "
                             f"but this model allows {limit}, prompt and answer; shorten the conversation or send "
                             "fewer images")
        super()._check_prompt_length(engine, inputs)


class EagleChatCompletionHandler(_RequestErrors, ChatCompletionHandler):
    pass


class EagleCompletionHandler(_RequestErrors, CompletionHandler):
    pass


class EagleResponseHandler(_RequestErrors, ResponseHandler):
    pass


def build_app(model: str, device: str = "auto", dtype: str | None = "auto", attn_implementation: str | None = None,
              trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(app, model_manager)``: transformers' serving app pinned to ``model`` (a local folder or Hub id),
    with ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/models`` and ``/health``.
    The model's process starts, and the model loads, before this returns."""
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    state = GenerationState()  # sequential `generate`: continuous batching is for text-only models
    loader = EagleModelLoader(device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                              attn_implementation=attn_implementation)
    manager = EagleModelManager(loader, state, model_timeout=-1, force_model=model)
    handlers = {"model_manager": manager, "generation_state": state}
    app = build_server(
        manager,
        EagleChatCompletionHandler(**handlers),
        completion_handler=EagleCompletionHandler(**handlers),
        response_handler=EagleResponseHandler(**handlers),
        transcription_handler=TranscriptionHandler(manager),
        systemone_handler=SystemOneHandler(**handlers, decision_config=None),
    )
    return app, manager

"""OpenAI-compatible serving on transformers' own server (``transformers/cli/serving``, 5.24).

``transformers serve`` cannot load eagle-hf as it is: its ``ModelManager._load_model`` resolves the
class with ``getattr(transformers, config.architectures[0])`` (``cli/serving/model_manager.py:319``)
and ``get_model_modality`` looks the class name up in the static ``*_MAPPING_NAMES`` tables
(``model_manager.py:466-496``), which ``AutoModel*.register`` does not extend. transformers has no
hook for either, so :func:`build_app` composes the same FastAPI app that ``Serve`` builds
(``build_server`` with transformers' handlers and generation managers) around two small
subclasses:

* :class:`EagleModelManager` loads eagle-hf folders through ``AutoModelForImageTextToText`` and
  reports them as vision-language models (so ``image_url`` parts reach the processor);
* :class:`EagleChatCompletionHandler` turns request errors into HTTP 400 with the message: an image
  that cannot be read, a prompt longer than the model allows. Upstream these surface as a 500 or,
  when streaming, as an error event inside a 200 response (``GenerateManager.generate_streaming``
  in ``cli/serving/utils.py``), so the prompt is prepared once before the request is dispatched.

Everything else (routing, the OpenAI schemas, streaming, generation on one inference thread,
``force_model`` pinning, which answers a request for another model with a 400) is transformers'.
"""

from __future__ import annotations

from typing import Any

EAGLE_MODEL_TYPES = ("eagle_vl", "eagle_llama")


def _is_eagle(model) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in EAGLE_MODEL_TYPES


def _classes():
    """The subclasses, defined on first use so that importing this module needs no serving extras."""
    from fastapi import HTTPException
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import Modality

    class EagleModelManager(ModelManager):
        def _load_model(self, model_id_and_revision: str, tqdm_class=None, progress_callback=None, gguf_file=None):
            import eagle_hf  # noqa: F401  (registers the Auto classes)
            from transformers import AutoConfig, AutoModelForImageTextToText
            from transformers.cli.serving.utils import split_revision

            model_id, revision = split_revision(model_id_and_revision)
            config = AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=self.trust_remote_code)
            if config.model_type not in EAGLE_MODEL_TYPES:
                return super()._load_model(model_id_and_revision, tqdm_class, progress_callback, gguf_file)
            kwargs = {"revision": revision, "dtype": self.dtype, "device_map": self.device,
                      "trust_remote_code": self.trust_remote_code}
            if self.attn_implementation is not None:
                kwargs["attn_implementation"] = self.attn_implementation
            quantization_config = self.get_quantization_config()
            if quantization_config is not None:
                kwargs["quantization_config"] = quantization_config
            return AutoModelForImageTextToText.from_pretrained(model_id, **kwargs).eval()

        @staticmethod
        def get_model_modality(model, processor=None):
            if _is_eagle(model):
                return Modality.VLM
            return ModelManager.get_model_modality(model, processor=processor)

    class EagleChatCompletionHandler(ChatCompletionHandler):
        async def handle_request(self, body: dict, request_id: str):
            self._validate_request(body)
            try:
                self._check_prompt(body)
                return await super().handle_request(body, request_id)
            except (ValueError, OSError) as err:  # PIL's UnidentifiedImageError is an OSError
                raise HTTPException(status_code=400, detail=str(err)) from err

        def _check_prompt(self, body: dict) -> None:
            """Prepare the prompt as the handler will, so that unreadable images and over-long prompts are
            refused before a (streaming) response has started."""
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise ValueError("`messages` must be a non-empty list of chat messages")
            _, model, processor = self._resolve_model(dict(body))
            if not _is_eagle(model):
                return
            messages = self.get_processor_inputs_from_messages(body["messages"], Modality.VLM)
            inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors=None)
            length, limit = len(inputs["input_ids"][0]), model.config.max_sequence_length
            if length > limit:
                n_images = sum(c.get("type") == "image" for m in messages for c in m["content"])
                raise ValueError(f"the prompt is {length} tokens ({n_images} image(s) of "
                                 f"{model.config.image_seq_length} tokens) but this model allows {limit}; "
                                 "shorten the conversation or send fewer images")

    return EagleModelManager, EagleChatCompletionHandler


def build_app(model: str, device: str = "auto", dtype: str | None = "auto", attn_implementation: str | None = None,
              trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(app, model_manager)``: transformers' serving app pinned to ``model`` (a local folder or Hub id),
    with ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/models`` and ``/health``."""
    import eagle_hf  # noqa: F401  (registers the Auto classes before the model is preloaded)
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    manager_class, chat_class = _classes()
    manager = manager_class(device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                            attn_implementation=attn_implementation, continuous_batching=False, quantization=None,
                            model_timeout=-1, force_model=model)
    state = GenerationState(continuous_batching=False, compile=False, cb_config=None)
    app = build_server(
        manager,
        chat_class(model_manager=manager, generation_state=state, chat_template_kwargs={}),
        completion_handler=CompletionHandler(model_manager=manager, generation_state=state),
        response_handler=ResponseHandler(model_manager=manager, generation_state=state, chat_template_kwargs={}),
        transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(model_manager=manager, generation_state=state, chat_template_kwargs={},
                                           decision_config=None),
        generation_state=state,
    )
    return app, manager

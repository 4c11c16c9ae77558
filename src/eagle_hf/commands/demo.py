"""``eagle-hf demo``: a Gradio web page for chatting with an EAGLE model about images.

The page serves on 127.0.0.1 only. A person uploads an image with the paperclip of the message
box, asks about it over several turns, and sees the answer stream in; the generation settings
sit in a panel below. Problems with a turn (an unreadable file, an image sent twice, an empty
question, a conversation longer than the model's context) are shown above the message box and
leave the conversation as it was, so the page keeps working.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .chat import add_generation_arguments

TITLE = "EAGLE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (save_pretrained output) or Hub id")
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    add_generation_arguments(parser)


def run(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the web demo needs gradio: pip install 'eagle-hf[demo]'") from None
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    from .chat import quiet_transformers

    with quiet_transformers():
        return _serve(args)


def _serve(args) -> int:
    from eagle_hf.inference import ChatEngine, load_model_and_processor

    settings = _settings(args)
    model, processor = load_model_and_processor(args.model, args.device, args.dtype,
                                                trust_remote_code=args.trust_remote_code)
    engine = ChatEngine(model, processor, settings)
    app = build_app(engine, model_name=str(args.model))
    print(f"eagle-hf demo: {args.model} on {model.device}; open http://127.0.0.1:{args.port}", flush=True)
    app.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=args.port, share=False, inbrowser=False, show_error=True,
        quiet=False,
    )
    return 0


def _settings(args):
    from .chat import settings_from_args

    return settings_from_args(args)


def default_settings(engine) -> dict[str, Any]:
    """Slider starting values: the command-line settings, else the model's generation_config."""
    from eagle_hf.inference import context_limit

    gen = engine.model.generation_config
    s = engine.settings
    limit = context_limit(engine.model)
    max_new = s.max_new_tokens or getattr(gen, "max_new_tokens", None) or 512
    if s.temperature is not None:
        temperature = s.temperature
    else:
        temperature = float(gen.temperature or 1.0) if gen.do_sample else 0.0
    top_p = s.top_p if s.top_p is not None else float(gen.top_p or 1.0)
    return {"max_new_tokens": int(min(max_new, limit)), "max_new_tokens_limit": int(min(limit, 8192)),
            "temperature": float(temperature), "top_p": float(top_p)}


def _describe(engine, model_name: str) -> str:
    vision = engine.model.config.vision_config
    grid = vision.grid_size
    return (f"**{model_name}** · experts: {', '.join(vision.expert_order)} · {grid}x{grid} tokens per image · "
            f"{engine.model.device}. Attach an image with the paperclip, then ask about it.")


def make_handlers(engine):
    """``(respond, clear)``: the page's event handlers, separate from the layout so that they can
    be exercised without a browser."""
    import gradio as gr

    from eagle_hf.inference import Conversation, GenerationSettings, one_line, stream_generate

    def respond(message: dict | None, chat: list, conversation: Conversation, max_new_tokens: float,
                temperature: float, top_p: float):
        """Validate the turn, then stream the answer into the chat. Every problem is reported in the
        status line and leaves chat and conversation unchanged."""
        message = message or {}
        text = (message.get("text") or "").strip()
        files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
        chat = list(chat or [])
        added = 0
        try:
            settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                          top_p=float(top_p))
            settings.validate()
            if not text:
                raise ValueError("the prompt is empty: type a question about the image")
            for path in files:
                conversation.add_image(path, name=Path(path).name)
                added += 1
            user_message, inputs, gen = engine.prepare(conversation, text, settings)
        except (ValueError, OSError) as err:
            for _ in range(added):  # forget the images of the refused turn
                conversation.image_keys.pop()
                conversation.pending_images.pop()
            yield message, chat, conversation, _status(one_line(err))  # hand the message back to edit
            return
        shown = chat + [{"role": "user", "content": {"path": p}} for p in files]
        shown.append({"role": "user", "content": text})
        answer = ""
        yield gr.skip(), shown + [{"role": "assistant", "content": ""}], conversation, ""
        try:
            with engine.lock:
                for piece in stream_generate(engine.model, engine.processor.tokenizer, inputs, **gen):
                    answer += piece
                    yield gr.skip(), shown + [{"role": "assistant", "content": answer.lstrip()}], conversation, ""
        except Exception as err:  # noqa: BLE001  (the page must survive any generation failure)
            conversation.discard_pending()
            yield message, chat, conversation, _status(f"generation failed: {one_line(err)}")
            return
        conversation.commit(user_message, answer.strip())
        yield gr.skip(), shown + [{"role": "assistant", "content": answer.strip()}], conversation, ""

    def clear():
        return [], Conversation(), {"text": "", "files": []}, ""

    return respond, clear


def _take_message(message):
    # Emptied and locked in an event of its own, before the answer streams, so that a message
    # cannot be sent twice while its answer is being generated.
    import gradio as gr

    return gr.MultimodalTextbox(value=None, interactive=False), message


def _release_box():
    import gradio as gr

    return gr.MultimodalTextbox(interactive=True)


def build_app(engine, model_name: str = "model"):
    """The Gradio Blocks app around a `ChatEngine` (one `Conversation` per browser session)."""
    import gradio as gr

    from eagle_hf.inference import Conversation

    defaults = default_settings(engine)
    respond, clear = make_handlers(engine)
    with gr.Blocks(title=f"{TITLE} demo", analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\n{_describe(engine, model_name)}")
        conversation = gr.State(Conversation())
        chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420, buttons=["copy"])
        status = gr.Markdown("", elem_id="status")
        box = gr.MultimodalTextbox(
            placeholder="Attach an image and ask a question...", file_types=["image"], file_count="multiple",
            sources=["upload"], show_label=False, elem_id="prompt", submit_btn=True,
        )
        with gr.Row():
            clear_button = gr.Button("Clear conversation", elem_id="clear")
        with gr.Accordion("Generation settings", open=False, elem_id="settings"):
            max_new = gr.Slider(1, defaults["max_new_tokens_limit"], value=defaults["max_new_tokens"], step=1,
                                label="Max new tokens", elem_id="max_new_tokens")
            temperature = gr.Slider(0.0, 2.0, value=defaults["temperature"], step=0.05,
                                    label="Temperature (0 = greedy)", elem_id="temperature")
            top_p = gr.Slider(0.05, 1.0, value=defaults["top_p"], step=0.05, label="Top-p (when sampling)",
                              elem_id="top_p")
        pending = gr.State()
        box.submit(_take_message, [box], [box, pending], queue=False, api_name=False).then(
            respond, [pending, chatbot, conversation, max_new, temperature, top_p],
            [box, chatbot, conversation, status], api_name="respond",
        ).then(_release_box, None, [box], queue=False, api_name=False)
        clear_button.click(clear, None, [chatbot, conversation, box, status], api_name="clear")
        # The chat panel's own trash button must forget the conversation too, not only the display.
        chatbot.clear(clear, None, [chatbot, conversation, box, status], api_name=False)
    return app


def _status(message: str) -> str:
    return f"**Error:** {message}" if message else ""

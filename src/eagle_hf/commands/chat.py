"""``eagle-hf chat``: talk to an EAGLE model in the terminal.

With ``--prompt`` it answers once and exits; otherwise it reads questions from standard input,
one per line, with ``/image PATH`` to attach an image to the next question, ``/reset`` to start
over and ``/quit`` to leave. Answers are printed as they are generated. The prompt format is
always the processor's chat template.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

HELP = "commands: /image PATH (attach an image to the next question), /reset (new conversation), /quit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (save_pretrained output) or Hub id")
    parser.add_argument("--image", action="append", default=[], metavar="IMG",
                        help="image for the first question (repeat for several)")
    parser.add_argument("--prompt", help="answer this one question and exit (default: interactive session)")
    add_generation_arguments(parser)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bfloat16 on GPUs that support it, float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer length limit (default: the model's generation_config, else 512)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy; > 0 samples (default: the model's generation_config)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, used when sampling")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a folder's own code (only for folders exported with remote code)")


def settings_from_args(args):
    from eagle_hf.inference import GenerationSettings

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    settings.validate()
    return settings


@contextlib.contextmanager
def quiet_transformers():
    """Progress bars and library warnings (e.g. the tokenizer's "sequence longer than the maximum",
    which the context check reports in its own words) would interleave with the conversation.
    Restored afterwards, because the commands also run inside other programs and tests."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def run(args) -> int:
    with quiet_transformers():
        return _run(args)


def _run(args) -> int:
    from eagle_hf.inference import ChatEngine, Conversation, load_model_and_processor, one_line

    settings = settings_from_args(args)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("the prompt is empty: give --prompt a question, or leave --prompt out to chat interactively")
    conversation = Conversation()
    for image in args.image:  # checked before the (slow) model load
        conversation.add_image(image)
    model, processor = load_model_and_processor(args.model, args.device, args.dtype,
                                                trust_remote_code=args.trust_remote_code)
    engine = ChatEngine(model, processor, settings)
    if args.prompt is not None:
        try:
            _stream_answer(engine, conversation, args.prompt)
        except ValueError as err:
            raise ValueError(one_line(err)) from None
        return 0
    return _interactive(engine, conversation, args)


def _stream_answer(engine, conversation, text: str, stop_event: threading.Event | None = None) -> None:
    out = sys.stdout
    started = False
    for piece in engine.stream(conversation, text, stop_event=stop_event):
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


def _interactive(engine, conversation, args) -> int:
    from eagle_hf.inference import one_line

    err = sys.stderr
    interactive = sys.stdin.isatty()
    print(f"eagle-hf chat: {args.model} on {engine.model.device} ({str(engine.model.dtype).replace('torch.', '')}). "
          f"{HELP}", file=err)
    if conversation.pending_images:
        print(f"{len(conversation.pending_images)} image(s) attached to the first question.", file=err)
    while True:
        try:
            line = input("user> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=err)
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            command = command.lower()
            if command in ("/quit", "/exit", "/q"):
                break
            if command == "/reset":
                conversation.reset()
                print("conversation cleared", file=err)
            elif command == "/image":
                path = rest.strip().strip("'\"")
                if not path:
                    print("error: /image needs a path, e.g. /image photo.jpg", file=err)
                    continue
                try:
                    conversation.add_image(path)
                    print(f"image {path} attached to the next question", file=err)
                except (ValueError, OSError) as exc:
                    print(f"error: {one_line(exc)}", file=err)
            elif command in ("/help", "/?"):
                print(HELP, file=err)
            else:
                print(f"error: unknown command {command}; {HELP}", file=err)
            continue
        stop = threading.Event()
        try:
            if interactive:
                sys.stdout.write("assistant> ")
            _stream_answer(engine, conversation, text, stop_event=stop)
        except KeyboardInterrupt:
            stop.set()
            print("\n[answer interrupted; the turn was not kept]", file=err)
        except (ValueError, OSError, RuntimeError) as exc:
            # The conversation is unchanged by a failed turn, so the session can go on.
            print(f"error: {one_line(exc)}", file=err)
    return 0

"""The ``eagle-hf`` command: one entry point, one module per sub-command."""

import argparse
import importlib
import os
import sys

# sub-command -> module under eagle_hf.commands exposing `add_arguments(parser)` and `run(args)`.
COMMANDS = {
    "convert": "Convert an original NVlabs EAGLE checkpoint to a native eagle-hf folder.",
    "train": "Fine-tune an EAGLE model on LLaVA-format data with the HF Trainer.",
    "eval": "Generate answers for a LLaVA-format test set and score them.",
    "chat": "Chat with an EAGLE model in the terminal.",
    "demo": "Start the Gradio web demo on localhost.",
    "serve": "Serve a model with an OpenAI-compatible API (transformers' server).",
    "push": "Upload a saved model folder to the Hugging Face Hub.",
    "quickstart": "Make a synthetic VQA set, train the tiny model on the CPU, evaluate it.",
    "explore": "The paper's design-space study in miniature: experts, fusions, pre-alignment, one table.",
}

# The sub-commands that run a model, so allocate large CPU tensors over and over.
RUNS_MODELS = {"train", "eval", "chat", "demo", "serve", "quickstart", "explore"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``command``, only that sub-command's module is imported (the others
    are listed by name and help text), so ``eagle-hf --help`` and each command start fast."""
    parser = argparse.ArgumentParser(prog="eagle-hf", description="EAGLE for Hugging Face transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is not None and name != command:
            continue
        module = _load(name)
        if module is None:
            continue
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _load(name: str):
    try:
        return importlib.import_module(f"eagle_hf.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"eagle_hf.commands.{name}":
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else ""  # "": no sub-command module is needed
    args = build_parser(command).parse_args(argv)
    if args.command in RUNS_MODELS:
        # torch's CPU allocator then asks for transparent huge pages for large tensors (c10 reads
        # the flag at allocation time): a fresh 64 MiB activation costs 545 page faults instead of
        # 16,385. Full-size X5 experts, float32, 2-core CPU: 120 -> 101 s. A value already set is kept.
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as err:
        # User errors get one clear line, not a traceback.
        print(f"eagle-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

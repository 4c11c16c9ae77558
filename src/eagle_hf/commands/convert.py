"""``eagle-hf convert SRC DST``: original NVlabs EAGLE checkpoint -> native eagle-hf folder."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..convert.convert_eagle_weights_to_hf import TEMPLATE_BY_VOCAB
    from ..dtypes import DTYPE_CHOICES

    inferred = ", ".join(f"{v} -> {t}" for v, t in TEMPLATE_BY_VOCAB.items())
    parser.add_argument("src", help="folder of the original checkpoint (config.json with model_type eagle_llama, "
                                    "model*.safetensors or pytorch_model*.bin, optional tokenizer files)")
    parser.add_argument("dst", help="output folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="cast floating weights (default: keep the source's dtype)")
    parser.add_argument("--template", default=None,
                        help=f"chat template name (default: inferred from the LLM vocabulary size: {inferred})")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists (only once converted)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from ..convert import convert_original_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dst = convert_original_checkpoint(args.src, args.dst, dtype=args.dtype, template=args.template,
                                          max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                          progress=args.progress)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"converted {args.src} -> {dst}")
    return 0

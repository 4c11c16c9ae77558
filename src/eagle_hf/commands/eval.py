"""``eagle-hf eval``: answer a LLaVA-format test set with batched greedy generation and score it.

The last stdout line is one JSON object: ``exact_match`` (stripped, lower-cased equality with the
last ``gpt`` turn), ``n``, and ``per_type`` when rows carry a ``type``.
"""

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--model", required=True, help="a saved eagle-hf folder (e.g. the output of eagle-hf train)")
    parser.add_argument("--data", required=True, help="test rows (.json / .jsonl / datasets); the last gpt turn is the answer")
    parser.add_argument("--image-folder", help="folder the rows' relative image paths start from")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--limit", type=int, help="only the first N rows")
    parser.add_argument("--blank-images", action="store_true",
                        help="replace every image with a blank one: a text-only baseline of the same model")
    parser.add_argument("--template", help="conversation template (default: the processor's)")
    parser.add_argument("--predictions", help="also write every prediction to this .jsonl file")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--skip-malformed", action="store_true", help="skip malformed rows instead of stopping")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from ..training.evaluation import evaluate, format_table, load_for_eval

    model, processor = load_for_eval(args.model, device=args.device)
    scores, predictions = evaluate(
        model, processor, args.data, args.image_folder, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, blank_images=args.blank_images, limit=args.limit,
        on_error="skip" if args.skip_malformed else "raise", progress=args.progress, template=args.template)
    if args.predictions:
        with open(args.predictions, "w") as f:
            for p in predictions:
                f.write(json.dumps(p, default=str) + "\n")
    if "per_type" in scores:
        print(format_table({"exact_match": scores}))
    print(json.dumps(scores))
    return 0

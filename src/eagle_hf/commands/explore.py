"""``eagle-hf explore``: the paper's design-space study in miniature on the CPU.

Trains the tiny model on a synthetic task for each choice of a small grid (expert subsets in the
paper's greedy order, the fusions, with and without per-expert pre-alignment) for the same number
of steps, scores each on the same held-out questions, and prints the table (also written as
``results.{csv,json,md}`` and, with matplotlib, ``results.png`` under ``--output-dir``).
"""

import argparse
import json


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.explore import AXES, DEFAULTS

    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--output-dir", default="eagle-explore", help="data, one folder per run, and the tables")
    parser.add_argument("--axes", type=_names, default=AXES, metavar="AXIS[,AXIS]",
                        help=f"which comparisons to run: {', '.join(AXES)}")
    parser.add_argument("--experts", type=_names, metavar="NAME[,NAME]",
                        help="the greedy chain of the experts axis (default: the paper's order, clip, convnext, sam, "
                             "pix2struct, eva); the fusions and prealign axes use its first two")
    parser.add_argument("--fusions", type=_names, metavar="NAME[,NAME]", help="fusions to compare (default: all)")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                        help="optimizer steps of every row, all stages together")
    parser.add_argument("--train-images", type=int, default=DEFAULTS["train_images"])
    parser.add_argument("--test-images", type=int, default=DEFAULTS["test_images"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"], help="every stage's")
    parser.add_argument("--seed", type=int, default=0, help="data, initial weights and data order of every row")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from ..training.explore import ExploreOptions, explore, format_markdown

    report = explore(ExploreOptions(
        output_dir=args.output_dir, axes=args.axes, experts=args.experts, fusions=args.fusions, steps=args.steps,
        train_images=args.train_images, test_images=args.test_images, batch_size=args.batch_size, learning_rate=args.learning_rate,
        seed=args.seed,
        progress=args.progress))
    print(format_markdown(report))
    print(f"{len(report['rows'])} rows in {report['total_seconds']:.0f} s ({report['cpu_seconds']:.0f} CPU s); "
          f"tables in {args.output_dir}/results.*")
    print(json.dumps({"rows": [{k: r[k] for k in ("axis", "configuration", "run", "exact_match", "per_type", "steps",
                                                  "params", "vision_params", "tokens_per_image", "train_seconds")}
                               for r in report["rows"]], "total_seconds": report["total_seconds"]}))
    return 0

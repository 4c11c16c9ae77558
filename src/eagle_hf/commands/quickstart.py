"""``eagle-hf quickstart``: make a synthetic VQA set, train the tiny model on the CPU, evaluate it.

Training goes through ``eagle-hf train``'s code path and evaluation through ``eagle-hf eval``'s.
The model is scored on held-out images (per question type, and on the images holding colour-shape
pairs that training never showed), after each stage, and with blank images (the text-only
baseline) next to the answer prior measured on the same test questions.
"""

import argparse
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

# The recipe. Trained from scratch in one stage, the tiny EAGLE learns colour (a strong feature of
# any random network) and then sits near chance on shape, count and position for thousands of
# steps; pre-alignment first (experts + projector against the frozen random LLM), then everything,
# learns the default task. The compositional generators ("shapes", "glyphs") are not learnt by this
# recipe yet (README, "Training"). Fixed step counts: a loaded machine trains the same model, slower.
# Each stage: (eagle-hf train --stage, learning rate, steps).
RECIPE = dict(generator="grouped", n_train=12000, n_test=300, image_size=64, batch_size=32,
              stages=(("prealign", 1e-3, 1200), ("finetune", 1e-3, 1800)), warmup=0.03)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.synthetic import GENERATOR_NAMES

    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--output-dir", default="eagle-quickstart", help="data, model, plots and results go here")
    parser.add_argument("--generator", default=RECIPE["generator"], choices=GENERATOR_NAMES,
                        help="how the synthetic scenes are built: 'grouped' (one shape and colour per image) or a "
                             "compositional generator of eagle_hf.training.synthetic.GENERATORS")
    parser.add_argument("--train-images", type=int, default=RECIPE["n_train"])
    parser.add_argument("--test-images", type=int, default=RECIPE["n_test"])
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply each stage's step count")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the initial weights and the data order")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def answer_prior(test_json: Path) -> dict[str, tuple[str, float, int]]:
    """Per question type of the test rows: the most frequent answer, how often it is right there,
    and the number of rows. Its accuracy is the ceiling of a model that never looks at the image."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in json.loads(Path(test_json).read_text()):
        counts[row["type"]][row["conversations"][-1]["value"]] += 1
    return {t: (c.most_common(1)[0][0], c.most_common(1)[0][1] / sum(c.values()), sum(c.values()))
            for t, c in sorted(counts.items())}


def prior_scores(prior: dict[str, tuple[str, float, int]]) -> dict:
    """:func:`answer_prior` in the shape of ``evaluation.score``'s result."""
    n = sum(k for _, _, k in prior.values())
    return {"exact_match": sum(p * k for _, p, k in prior.values()) / n, "n": n,
            "per_type": {t: {"exact_match": p, "n": k} for t, (_, p, k) in prior.items()}}


def blank_image_margin(prior: dict[str, tuple[str, float, int]]) -> float:
    """Three binomial standard errors of the answer prior's overall accuracy on these rows: how far
    a model that ignores the image can land above the prior by chance."""
    scores = prior_scores(prior)
    p, n = scores["exact_match"], scores["n"]
    return 3 * math.sqrt(p * (1 - p) / n)


def held_out_score(predictions: list[dict], test_json: Path) -> dict:
    """Exact match on the test questions whose image holds a colour-shape pair never drawn in training."""
    combo = {row["id"]: row.get("combo") for row in json.loads(Path(test_json).read_text())}
    hits = [p["correct"] for p in predictions if combo.get(p["id"]) == "held_out"]
    return {"exact_match": sum(hits) / len(hits) if hits else None, "n": len(hits)}


def run(args: argparse.Namespace) -> int:
    from ..training.api import TrainOptions, train
    from ..training.data import build_dataset
    from ..training.evaluation import evaluate, format_table, load_for_eval
    from ..training.probe import probe
    from ..training.synthetic import make_synthetic_vqa
    from ..training.tiny import build_tiny

    for name in ("train_images", "test_images", "batch_size", "steps_scale"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"eagle-hf quickstart: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    out = Path(args.output_dir)
    t0 = time.time()
    print(f"[1/4] synthetic VQA set ({args.generator}): {args.train_images} training and {args.test_images} held-out "
          f"images -> {out / 'data'}")
    paths = make_synthetic_vqa(out / "data", args.train_images, args.test_images, image_size=RECIPE["image_size"],
                               seed=args.seed, generator=args.generator)
    common = dict(image_folder=str(paths["image_folder"]), batch_size=64, max_new_tokens=4)

    def measure(folder: Path, name: str, blank_too: bool = False) -> dict:
        """Scores (and, with ``blank_too``, blank-image scores) and the probe of one saved model,
        loaded once."""
        model, processor = load_for_eval(str(folder))
        scores, predictions = evaluate(model, processor, str(paths["test"]), **common)
        features[name] = probe(model, processor, paths["train"], paths["test"], paths["image_folder"])
        result = {"scores": scores, "predictions": predictions}
        if blank_too:
            result["blank"], _ = evaluate(model, processor, str(paths["test"]), blank_images=True, **common)
        return result

    # The random model and its tokenizer (learnt from the training text), saved so that the first
    # stage starts from a folder like every other, and its features can be probed before training.
    init_dir = out / "stage0-init"
    model, processor = build_tiny(build_dataset(str(paths["train"]), str(paths["image_folder"])).examples,
                                  seed=args.seed)
    model.save_pretrained(init_dir)
    processor.save_pretrained(init_dir)
    features: dict[str, dict[str, float]] = {}
    features["init"] = probe(model, processor, paths["train"], paths["test"], paths["image_folder"])

    print(f"[2/4] training the tiny model on {'the GPU' if _cuda() else 'the CPU'} -> {out / 'model'}")
    model_dir, source, steps, seconds, curves, after_stage = out / "model", init_dir, 0, 0.0, [], {}
    for k, (stage, lr, n) in enumerate(RECIPE["stages"]):
        last = k == len(RECIPE["stages"]) - 1
        stage_dir = model_dir if last else out / f"stage{k + 1}-{stage}"
        n_steps = max(1, int(n * args.steps_scale))
        print(f"      stage {k + 1}: eagle-hf train --data {paths['train']} --image-folder {paths['image_folder']} "
              f"--model {source} --output-dir {stage_dir} --stage {stage} --learning-rate {lr:g} "
              f"--max-steps {n_steps} --batch-size {args.batch_size} --warmup {RECIPE['warmup']:g} --seed {args.seed} "
              "--no-resume")
        summary = train(TrainOptions(
            data=str(paths["train"]), image_folder=str(paths["image_folder"]), model=str(source),
            output_dir=str(stage_dir), stage=stage, max_steps=n_steps, batch_size=args.batch_size, learning_rate=lr,
            warmup=RECIPE["warmup"], save_steps=10**9, save_total_limit=1, logging_steps=25, resume=False,
            seed=args.seed, progress=args.progress,
        ))
        print(f"      stage {k + 1} ({stage}): {summary['steps']} steps in "
              f"{summary['train_runtime_s']:.0f} s, final training loss {summary['train_loss']:.3f}")
        source, steps, seconds = stage_dir, steps + summary["steps"], seconds + summary["train_runtime_s"]
        curves.append((stage, stage_dir, summary["steps"]))
        if not last:
            after_stage[f"after stage {k + 1}"] = measure(stage_dir, f"after stage {k + 1}")["scores"]
    plot = write_stage_plot(curves, model_dir)
    print(f"      loss curve: {plot}")

    print("[3/4] evaluating on held-out images (eagle-hf eval), then with blank images (text-only baseline)")
    final = measure(model_dir, "final", blank_too=True)
    with_image, predictions, text_only = final["scores"], final["predictions"], final["blank"]
    prior = answer_prior(paths["test"])
    held_out = held_out_score(predictions, paths["test"])

    print("[4/4] exact match on held-out questions")
    print(format_table({**after_stage, "with image": with_image, "blank image": text_only,
                        "answer prior": prior_scores(prior)}))
    if held_out["n"]:
        print(f"questions about images with colour-shape pairs never seen in training: "
              f"{held_out['exact_match']:.3f} (n={held_out['n']})")
    print("linear probe of the image token under each object (held-out images): "
          + ", ".join(f"{name} shape {f['shape']:.2f} colour {f['color']:.2f}" for name, f in features.items()))
    result = {
        "generator": args.generator, "seed": args.seed,
        "exact_match": with_image["exact_match"], "n": with_image["n"],
        "per_type": {t: s["exact_match"] for t, s in with_image["per_type"].items()},
        "held_out_combo_exact_match": held_out["exact_match"], "held_out_combo_n": held_out["n"],
        "per_type_after_stage": {name: {"all": r["exact_match"], **{t: s["exact_match"] for t, s in r["per_type"].items()}}
                                 for name, r in after_stage.items()},
        "probe": features,
        "text_only_exact_match": text_only["exact_match"],
        "text_only_per_type": {t: s["exact_match"] for t, s in text_only["per_type"].items()},
        "answer_prior_exact_match": prior_scores(prior)["exact_match"],
        "answer_prior_per_type": {t: p for t, (_, p, _) in prior.items()},
        "blank_image_margin": blank_image_margin(prior),
        "train_steps": steps, "train_seconds": seconds,
        "total_seconds": time.time() - t0, "model": str(model_dir), "loss_plot": str(plot),
    }
    (out / "results.json").write_text(json.dumps({**result, "predictions": predictions}, indent=1, default=str))
    print(f"model: {model_dir}  (reload: import eagle_hf; AutoModelForImageTextToText.from_pretrained(...))")
    print(json.dumps(result))
    return 0


def write_stage_plot(stages: list[tuple[str, Path, int]], model_dir: Path) -> Path:
    """One training-loss curve over all stages, each stage's steps after the previous ones'
    (``training_loss.csv`` and, with matplotlib, ``training_loss.png`` next to the model)."""
    from ..training.api import plot_losses, read_loss_log

    series, offset = {}, 0
    for stage, folder, steps in stages:
        series[stage] = [(offset + step, loss) for step, loss in read_loss_log(folder)["train"]]
        offset += steps
    table = model_dir / "training_loss.csv"
    table.write_text("step,stage,loss\n" + "".join(f"{s},{stage},{loss}\n" for stage, points in series.items()
                                                   for s, loss in points))
    plot = plot_losses(series, model_dir / "training_loss.png", ylabel="training loss",
                       title="eagle-hf quickstart: tiny EAGLE on synthetic VQA")
    return Path(plot) if plot else table


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

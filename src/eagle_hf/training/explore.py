"""A design-space study of the paper's kind (EAGLE §3, its ablation tables) on a CPU budget.

Each choice of a small grid trains the tiny model from the same random start (same seed) on the
same synthetic task for the same number of optimizer steps, through ``eagle-hf train``'s code
path (`training.api.train`), and is scored on the same held-out questions through ``eagle-hf
eval``'s (`training.evaluation`). The axes, as in the paper:

* ``experts``: expert subsets in the paper's greedy order (X1 = CLIP, then + ConvNeXt, + SAM,
  + Pix2Struct, + EVA-02: the order of the released X5), channel concatenation;
* ``fusions``: every registered fusion on one fixed two-expert set (the first two of that order:
  its first expert sees the smallest image, so the low/high-resolution fusions are valid);
* ``prealign``: that set trained ``finetune`` only, ``prealign`` -> ``finetune`` (the experts
  aligned together) or ``prealign-experts`` -> ``pretrain`` -> ``finetune`` (the paper's three
  stages), all at the same total number of steps.

Fixed step counts, never a time budget, so a loaded machine produces the same table, only slower.
"""

import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

AXES = ("experts", "fusions", "prealign")
# Recipes as (stage, share of the steps), each an `eagle-hf train` stage. "prealign" is the
# quickstart's (experts + projector against the frozen LLM, all experts at once, then everything),
# "prealign-experts" the paper's three stages. Trained from scratch in one stage, the tiny model
# sits at the answer prior for far longer than this study's budget (README, "Training"), so the
# experts and fusions axes use BASE_RECIPE, and the prealign axis compares all three.
RECIPES = {
    "finetune": (("finetune", 1.0),),
    "prealign": (("prealign", 0.4), ("finetune", 0.6)),
    "prealign-experts": (("prealign-experts", 0.4), ("pretrain", 0.1), ("finetune", 0.5)),
}
RECIPE_LABELS = {"finetune": "finetune only", "prealign": "prealign, finetune",
                 "prealign-experts": "prealign-experts, pretrain, finetune"}
BASE_RECIPE = "prealign"
# Sized so the default grid (11 runs) fits about ten minutes of CPU. At this budget the runs measured
# here all stayed at the constant-answer baseline (README, "Training"): raise --steps for a study.
DEFAULTS = dict(steps=300, train_images=3000, test_images=250, batch_size=16, learning_rate=1e-3, warmup=0.03)
EVAL = dict(batch_size=64, max_new_tokens=4)  # answers are one word; the stop token ends them earlier


def make_task(out_dir: str | Path, n_train: int, n_test: int, image_size: int, seed: int) -> dict[str, Path]:
    """The study's task, and the one place that picks its generator: the compositional ``shapes``
    scenes, whose questions bind colour, shape and side (harder than the quickstart's ``grouped``
    scenes, which almost any configuration learns given the quickstart's budget)."""
    from .synthetic import make_synthetic_vqa

    return make_synthetic_vqa(out_dir, n_train, n_test, image_size=image_size, seed=seed, generator="shapes")


def greedy_order() -> list[str]:
    """The paper's expert order (its X2..X5 add them in the order the released X5 lists them)."""
    from ..modeling.configuration_eagle import RELEASED_X5_ORDER

    return list(RELEASED_X5_ORDER)


@dataclass(frozen=True)
class Choice:
    """One row of the table: which axis it belongs to, and the configuration it trains."""

    axis: str
    label: str
    experts: tuple[str, ...]
    fusion: str = "channel_concat"
    recipe: str = BASE_RECIPE

    @property
    def key(self) -> str:
        """The run's folder name; rows of different axes with the same configuration share a run."""
        return f"{'+'.join(self.experts)}__{self.fusion}__{self.recipe}"

    def config(self):
        """The tiny EAGLE config of this row: the registry's tiny preset of each expert and the tiny Llama."""
        from ..modeling.presets import preset_config

        return preset_config("tiny", experts=list(self.experts), vision_kwargs=dict(fusion=self.fusion))


@dataclass
class ExploreOptions:
    output_dir: str
    axes: tuple[str, ...] = AXES
    experts: tuple[str, ...] | None = None  # the greedy chain (default: the paper's)
    fusions: tuple[str, ...] | None = None  # default: every registered fusion
    steps: int = DEFAULTS["steps"]
    train_images: int = DEFAULTS["train_images"]
    test_images: int = DEFAULTS["test_images"]
    batch_size: int = DEFAULTS["batch_size"]
    learning_rate: float = DEFAULTS["learning_rate"]
    seed: int = 0
    progress: bool = True


def stage_steps(recipe: str, steps: int, n_experts: int) -> list[tuple[str, int]]:
    """Whole step counts per stage summing to ``steps`` exactly (``prealign-experts`` splits its
    share evenly over the experts, so it gets a multiple of their number)."""
    plan, left = [], steps
    stages = RECIPES[recipe]
    for k, (stage, share) in enumerate(stages):
        if k == len(stages) - 1:
            n = left
        elif stage == "prealign-experts":
            n = max(1, round(share * steps / n_experts)) * n_experts
        else:
            n = max(1, round(share * steps))
        plan.append((stage, n))
        left -= n
    if plan[-1][1] < 1:
        need = sum(n for _, n in plan[:-1]) + 1
        raise ValueError(f"--steps {steps} is too few for the {recipe!r} recipe with {n_experts} experts "
                         f"({', '.join(s for s, _ in stages)}): give at least {need}")
    return plan


def plan_grid(opts: ExploreOptions) -> list[Choice]:
    """The rows, in table order; raises ``ValueError`` naming the flag for bad choices."""
    from ..modeling.fusion import FUSIONS
    from ..modeling.registry import list_experts

    for name in ("steps", "train_images", "test_images", "batch_size"):
        value = getattr(opts, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
    if not opts.axes:
        raise ValueError(f"--axes is empty; choose from {', '.join(AXES)}")
    unknown = [a for a in opts.axes if a not in AXES]
    if unknown:
        raise ValueError(f"--axes: unknown axis {unknown[0]!r}; choose from {', '.join(AXES)}")
    order = list(opts.experts or greedy_order())
    for name in order:
        if name not in list_experts():
            raise ValueError(f"--experts: unknown expert {name!r}; registered experts: {', '.join(list_experts())}")
    if len(set(order)) != len(order):
        raise ValueError(f"--experts lists an expert twice: {','.join(order)}")
    fusions = list(opts.fusions or FUSIONS)
    for name in fusions:
        if name not in FUSIONS:
            raise ValueError(f"--fusions: unknown fusion {name!r}; fusions: {', '.join(FUSIONS)}")
    fixed = tuple(order[:2])
    if len(fixed) < 2 and ({"fusions", "prealign"} & set(opts.axes)):
        raise ValueError("the fusions and prealign axes compare on the first two of --experts: give at least two")

    rows: list[Choice] = []
    if "experts" in opts.axes:
        for k in range(1, len(order) + 1):
            rows.append(Choice("experts", " + ".join(order[:k]), tuple(order[:k])))
    if "fusions" in opts.axes:
        rows += [Choice("fusions", f, fixed, fusion=f) for f in fusions]
    if "prealign" in opts.axes:
        rows += [Choice("prealign", label, fixed, recipe=recipe) for recipe, label in RECIPE_LABELS.items()]
    from huggingface_hub.errors import StrictDataclassClassValidationError

    for row in rows:  # config errors (a fusion the set cannot feed) before any training
        try:
            row.config()
        except (ValueError, StrictDataclassClassValidationError) as err:
            reason = err.__cause__ if isinstance(err, StrictDataclassClassValidationError) and err.__cause__ else err
            raise ValueError(f"--experts/--fusions: the {row.axis} row {row.label!r} ({'+'.join(row.experts)}) "
                             f"cannot be built: {reason}") from None
        stage_steps(row.recipe, opts.steps, len(row.experts))
    return rows


def count_parameters(model) -> tuple[int, int]:
    """(all, vision tower) parameters, each shared tensor once."""
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    return total, vision


def train_choice(choice: Choice, opts: ExploreOptions, data: dict[str, Path], run_dir: Path) -> dict:
    """Build the row's model (random, seeded), save it as the first stage's ``--model``, run each
    stage with `training.api.train`; the final model is ``run_dir / "model"``."""
    from .api import TrainOptions, train
    from .data import build_dataset
    from .tiny import build_tiny

    rows = build_dataset(str(data["train"]), str(data["image_folder"])).examples
    model, processor = build_tiny(rows, seed=opts.seed, config=choice.config())
    init = run_dir / "init"
    model.save_pretrained(init)
    processor.save_pretrained(init)
    source, seconds, steps, stages = str(init), 0.0, 0, []
    plan = stage_steps(choice.recipe, opts.steps, len(choice.experts))
    for k, (stage, n) in enumerate(plan):
        out = run_dir / ("model" if k == len(plan) - 1 else f"stage{k + 1}-{stage}")
        start = time.perf_counter()
        summary = train(TrainOptions(
            data=str(data["train"]), image_folder=str(data["image_folder"]), model=source, output_dir=str(out),
            stage=stage, max_steps=n, batch_size=opts.batch_size, learning_rate=opts.learning_rate,
            warmup=DEFAULTS["warmup"], save_steps=10**9, save_total_limit=1, logging_steps=max(1, n // 10),
            resume=False, seed=opts.seed, progress=False))
        seconds += time.perf_counter() - start
        steps += summary["steps"]
        stages.append({"stage": stage, "steps": summary["steps"], "output_dir": str(out)})
        source = str(out)
    return {"model_dir": source, "train_seconds": seconds, "steps": steps, "stages": stages}


def evaluate_run(model_dir: str, data: dict[str, Path], predictions: Path) -> dict:
    """``eagle-hf eval``'s scores of a saved run (its answers written to ``predictions`` as
    ``eagle-hf eval --predictions`` writes them), with its parameter and token counts."""
    from .evaluation import evaluate, load_for_eval

    model, processor = load_for_eval(model_dir, device="cpu")
    scores, answers = evaluate(model, processor, str(data["test"]), str(data["image_folder"]), **EVAL)
    predictions.write_text("".join(json.dumps(a, default=str) + "\n" for a in answers))
    total, vision = count_parameters(model)
    return {"exact_match": scores["exact_match"], "n": scores["n"],
            "per_type": {t: s["exact_match"] for t, s in scores.get("per_type", {}).items()},
            "n_per_type": {t: s["n"] for t, s in scores.get("per_type", {}).items()},
            "params": total, "vision_params": vision, "tokens_per_image": model.config.image_seq_length}


def constant_baseline(test_json: str | Path) -> dict:
    """Exact match of the best constant answer per question type (each type's most frequent test
    answer): the most a model that ignores the image can reach on these questions."""
    from collections import Counter, defaultdict

    from .evaluation import normalize_answer

    counts: dict[str, Counter] = defaultdict(Counter)
    for row in json.loads(Path(test_json).read_text()):
        counts[str(row.get("type"))][normalize_answer(row["conversations"][-1]["value"])] += 1
    hits = {t: c.most_common(1)[0][1] for t, c in counts.items()}
    n = sum(sum(c.values()) for c in counts.values())
    return {"exact_match": sum(hits.values()) / n,
            "per_type": {t: hits[t] / sum(c.values()) for t, c in sorted(counts.items())}}


def explore(opts: ExploreOptions) -> dict:
    """Run the grid; write ``results.{json,csv,md}`` (and ``results.png`` with matplotlib) under
    ``opts.output_dir`` and return the JSON's content."""
    import torch

    rows = plan_grid(opts)
    out = Path(opts.output_dir)
    t0, cpu0 = time.perf_counter(), time.process_time()
    image_size = rows[0].config().vision_config.image_size
    data = make_task(out / "data", opts.train_images, opts.test_images, image_size, opts.seed)
    runs: dict[str, Choice] = {}
    for row in rows:
        runs.setdefault(row.key, row)
    results: dict[str, dict] = {}
    from tqdm.auto import tqdm

    bar = tqdm(list(runs.items()), desc="explore", unit="run", disable=not opts.progress)
    for key, choice in bar:
        bar.set_postfix_str(key)
        trained = train_choice(choice, opts, data, out / "runs" / key)
        results[key] = {**trained, **evaluate_run(trained["model_dir"], data, out / "runs" / key / "predictions.jsonl")}
    bar.close()
    table = [{"axis": r.axis, "configuration": r.label, "experts": list(r.experts), "fusion": r.fusion,
              "recipe": r.recipe, "run": r.key, **results[r.key]} for r in rows]
    report = {
        "rows": table,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
        "eval": dict(EVAL),
        "constant_baseline": constant_baseline(data["test"]),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
                    "torch": torch.__version__},
        "total_seconds": time.perf_counter() - t0,
        # CPU time of this process: what the wall time would be on an idle machine with one thread.
        "cpu_seconds": time.process_time() - cpu0,
        "data": {k: str(v) for k, v in data.items()},
    }
    write_reports(report, out)
    return report


TYPES_ORDER = ("color", "count", "position", "shape")


def _types(rows: list[dict]) -> list[str]:
    seen = {t for r in rows for t in r["per_type"]}
    return [t for t in TYPES_ORDER if t in seen] + sorted(seen - set(TYPES_ORDER))


def format_markdown(report: dict) -> str:
    """One table per axis (as the paper's ablation tables), the same columns in each."""
    rows = report["rows"]
    types = _types(rows)
    head = ["configuration", "experts", "fusion", "recipe", "steps", "tokens / image", "params", "vision params",
            *types, "all", "train s"]
    lines = []
    for axis in dict.fromkeys(r["axis"] for r in rows):
        lines += [f"**{axis}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in rows if r["axis"] == axis):
            cells = [r["configuration"], "+".join(r["experts"]), r["fusion"], r["recipe"], str(r["steps"]),
                     str(r["tokens_per_image"]), f"{r['params']:,}", f"{r['vision_params']:,}",
                     *[f"{r['per_type'][t]:.3f}" if t in r["per_type"] else "" for t in types],
                     f"{r['exact_match']:.3f}", f"{r['train_seconds']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    n = rows[0]["n"] if rows else 0
    if n:
        per_type = ", ".join(f"{t} {rows[0]['n_per_type'][t]}" for t in types)
        lines.append(f"Exact match on {n} held-out questions ({per_type}); binomial standard error of 'all' "
                     f"at 0.5: {math.sqrt(0.25 / n):.3f}.")
    base = report.get("constant_baseline")
    if base:
        per_type = ", ".join(f"{t} {base['per_type'][t]:.3f}" for t in types if t in base["per_type"])
        lines.append(f"Best constant answer per type (a model blind to the image): {per_type}, "
                     f"all {base['exact_match']:.3f}.")
    return "\n".join(lines) + "\n"


def write_reports(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.csv", out / "results.md"]
    written[0].write_text(json.dumps(report, indent=1))
    types = _types(report["rows"])
    with open(written[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["axis", "configuration", "experts", "fusion", "recipe", "steps", "tokens_per_image", "params",
                    "vision_params", *types, "all", "n", "train_seconds", "run"])
        for r in report["rows"]:
            w.writerow([r["axis"], r["configuration"], "+".join(r["experts"]), r["fusion"], r["recipe"], r["steps"],
                        r["tokens_per_image"], r["params"], r["vision_params"],
                        *[r["per_type"].get(t, "") for t in types], r["exact_match"], r["n"],
                        f"{r['train_seconds']:.2f}", r["run"]])
    written[2].write_text(format_markdown(report))
    plot = plot_report(report, out / "results.png")
    return written + ([plot] if plot else [])


def plot_report(report: dict, path: Path) -> Path | None:
    """Exact match per row (bars: all questions; dots: each question type); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["rows"]
    types = _types(rows)
    labels = [f"{r['axis']}: {r['configuration']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["exact_match"] for r in rows], color="#9bb8d3", label="all")
    for k, t in enumerate(types):
        ax.plot([r["per_type"].get(t, float("nan")) for r in rows], y, "o", ms=4, label=t, color=f"C{k + 1}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("exact match (held-out)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"eagle-hf explore: {report['options']['steps']} steps per row", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

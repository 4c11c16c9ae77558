"""One training code path for ``eagle-hf train``, ``eagle-hf quickstart`` and Python callers."""

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .data import EagleDataCollator, LlavaDataset, build_dataset
from .stages import StageLRs, apply_stage, default_lora_config, get_stage

logger = logging.getLogger(__name__)

# The original recipe's learning rates (§5.1 of the spec): stage 1 1e-3, stage 2 2e-5. A model
# trained from random weights (`tiny`) needs a large one throughout.
DEFAULT_LR = {"pretrain": 1e-3, "prealign": 2e-4, "prealign-experts": 2e-4, "finetune": 2e-5, "lora": 2e-4, "lora-experts": 2e-4,
              "qlora": 2e-4, "qlora-experts": 2e-4}
TINY_LR = 1e-3


@dataclass
class TrainOptions:
    data: Any
    output_dir: str
    model: str = "tiny"
    image_folder: str | None = None
    stage: str = "finetune"
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    projector_lr: float | None = None
    expert_lr: float | None = None
    weight_decay: float = 0.0
    warmup: float = 0.03
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    fsdp_config: str | dict | None = None
    eval_data: Any = None
    eval_steps: int | None = None
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 10
    max_length: int | None = None
    template: str | None = None
    on_error: str = "raise"
    streaming: bool = False
    group_by_modality_length: bool = False
    train_experts: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    resume: str | bool = "auto"
    seed: int = 0
    num_workers: int = 0
    time_budget_s: float | None = None
    tiny_vocab_size: int = 1024
    question_prior: float | None = None  # add-alpha smoothing of the counted question-only prior; None: off
    progress: bool = True
    save_final: bool = True
    callbacks: list | None = None


def resolve_precision(precision: str) -> dict[str, bool]:
    """``auto``: bf16 where the GPU supports it, fp32 otherwise (CPU autocast to bf16 is slower
    than fp32 on most CPUs and only trades accuracy for memory)."""
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def build_training_arguments(opts: TrainOptions, has_eval: bool, streaming: bool):
    from transformers import TrainingArguments

    if opts.epochs is not None and opts.max_steps is not None:
        raise ValueError("give --epochs or --max-steps, not both")
    if streaming and opts.max_steps is None:
        raise ValueError("streamed data has no length: give --max-steps")
    kwargs = dict(
        output_dir=opts.output_dir,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        learning_rate=opts.learning_rate,
        weight_decay=opts.weight_decay,
        warmup_steps=opts.warmup,
        lr_scheduler_type=opts.lr_scheduler,
        max_grad_norm=opts.max_grad_norm,
        num_train_epochs=opts.epochs if opts.epochs is not None else 1.0,
        max_steps=opts.max_steps if opts.max_steps is not None else -1,
        logging_steps=opts.logging_steps,
        save_strategy="steps",
        save_steps=opts.save_steps,
        save_total_limit=opts.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=opts.eval_steps or opts.save_steps,
        activation_checkpointing=opts.gradient_checkpointing,
        remove_unused_columns=False,  # the collator needs the raw rows
        label_names=["labels"],
        dataloader_num_workers=opts.num_workers,
        report_to="none",
        seed=opts.seed,
        disable_tqdm=not opts.progress,
        deepspeed=opts.deepspeed,
        # Without it accelerate treats a torchrun launch on a CPU-only machine as N separate runs.
        use_cpu=not torch.cuda.is_available(),
        **resolve_precision(opts.precision),
    )
    if opts.fsdp_config:
        if not torch.cuda.is_available():
            # accelerate (1.15) only turns FSDP on for GPU-type launches: a CPU launch would quietly
            # run as DDP. FSDP2 itself does run on CPUs with gloo (examples/fsdp2_cpu.py).
            raise ValueError("FSDP through the Trainer needs GPUs; on this CPU-only machine torchrun gives DDP over "
                             "gloo without --fsdp, and examples/fsdp2_cpu.py shows FSDP2 itself on the CPU")
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = opts.fsdp_config
    args = TrainingArguments(**kwargs)
    if opts.deepspeed and kwargs["use_cpu"] and args.world_size > 1:
        # On a CPU launch accelerate sets up gloo itself and leaves DeepSpeed's comm layer alone, but
        # ZeRO-3's zero.Init (inside from_pretrained) reads the world size from it.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    return args


def _load_model_and_processor(opts: TrainOptions, train_examples, precision: dict):
    import eagle_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..modeling.validation import check_processor_matches_model

    if opts.model == "tiny":
        from .tiny import build_tiny

        return build_tiny(train_examples, vocab_size=opts.tiny_vocab_size, seed=opts.seed)
    stage = get_stage(opts.stage)
    load_kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if precision["bf16"] else torch.float32}
    if stage.quantize_llm_bits:
        if not torch.cuda.is_available():
            raise ValueError(f"stage {stage.name!r} loads the LLM in {stage.quantize_llm_bits}-bit with bitsandbytes, "
                             "which needs a CUDA GPU; use 'lora' on this machine")
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"])
    if not Path(opts.model).is_dir():
        raise FileNotFoundError(f"--model {opts.model!r} is neither 'tiny' nor a saved eagle-hf folder")
    model = AutoModelForImageTextToText.from_pretrained(opts.model, **load_kwargs)
    processor = AutoProcessor.from_pretrained(opts.model)
    check_processor_matches_model(processor, model.config, where=f"the processor in {opts.model}")
    if stage.quantize_llm_bits:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=opts.gradient_checkpointing)
    return model, processor


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a ``checkpoint-*`` folder cannot be resumed from (None: it is complete).

    The Trainer writes ``trainer_state.json`` last, after weights, optimizer and RNG states, so a
    process killed while saving leaves a folder without it (or with it cut short)."""
    from transformers.trainer_callback import TrainerState

    from ..modeling.safetensors_header import CheckpointError, read_safetensors_header

    folder = Path(folder)
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json (the save was cut short)"
    try:
        TrainerState.load_from_json(str(state_file))
    except (ValueError, TypeError) as err:
        return f"unreadable trainer_state.json ({err})"
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            read_safetensors_header(weights)
        except CheckpointError as err:
            return str(err)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError) as err:
            return f"unreadable {index.name} ({err})"
        lacking = sorted(s for s in shards if not (folder / s).is_file())
        if lacking:
            return f"weight shards missing: {', '.join(lacking)}"
    return None


def last_checkpoint(output_dir: str) -> str | None:
    """The newest *complete* ``checkpoint-*`` folder of ``output_dir``; newer incomplete ones
    (a run killed while saving) are skipped with a warning that names them."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(output_dir):
        return None
    numbered = []
    for entry in Path(output_dir).iterdir():
        tail = entry.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if entry.is_dir() and entry.name.startswith(PREFIX_CHECKPOINT_DIR + "-") and tail.isdigit():
            numbered.append((int(tail), entry))
    for _, folder in sorted(numbered, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("skipping incomplete checkpoint %s: %s", folder, problem)
    return None


def train(opts: TrainOptions, model=None, processor=None) -> dict:
    """Train and save to ``opts.output_dir``; returns a summary (also written as ``train_summary.json``).
    ``model``/``processor`` given: train those instead of loading ``opts.model``."""
    from .trainer import EagleTrainer

    if get_stage(opts.stage).per_expert:
        return train_per_expert(opts)
    start = time.time()
    train_set = build_dataset(opts.data, opts.image_folder, on_error=opts.on_error, streaming=opts.streaming)
    eval_set = None
    if opts.eval_data is not None:
        eval_set = build_dataset(opts.eval_data, opts.image_folder, on_error=opts.on_error)
    streaming = not isinstance(train_set, LlavaDataset)

    if opts.learning_rate is None:
        opts.learning_rate = TINY_LR if opts.model == "tiny" else DEFAULT_LR[get_stage(opts.stage).name]
    # Built before the model: under ZeRO-3, from_pretrained must see the DeepSpeed config.
    args = build_training_arguments(opts, eval_set is not None, streaming)
    precision = resolve_precision(opts.precision)
    tokenizer_rows = train_set.examples if not streaming else _first_examples(train_set, 2000)
    if model is None:
        model, processor = _load_model_and_processor(opts, tokenizer_rows, precision)

    lrs = StageLRs(opts.learning_rate, opts.projector_lr, opts.expert_lr, opts.weight_decay)
    lora = default_lora_config(opts.lora_r, opts.lora_alpha) if get_stage(opts.stage).lora else None
    staged = apply_stage(model, opts.stage, lrs, train_experts=opts.train_experts, lora_config=lora)
    logger.info("stage %s trains %s", opts.stage, staged.trainable)

    max_length = opts.max_length or getattr(model.config, "max_sequence_length", None)
    collator = EagleDataCollator(processor, template=opts.template, max_length=max_length, on_error=opts.on_error)
    prior = None
    if opts.question_prior is not None:
        from .question_prior import QuestionPrior

        prior = QuestionPrior.from_dataset(train_set, collator, model.get_output_embeddings().out_features,
                                           alpha=opts.question_prior)
        logger.info("question prior: %d question turns counted", len(prior))
    trainer = EagleTrainer(
        model=staged.model, args=args, train_dataset=train_set, eval_dataset=eval_set, data_collator=collator,
        processing_class=processor, stage_lrs=lrs, group_by_modality_length=opts.group_by_modality_length,
        time_budget_s=opts.time_budget_s, callbacks=opts.callbacks, question_prior=prior,
    )
    resume = opts.resume
    if resume == "auto":
        resume = last_checkpoint(opts.output_dir)
    elif resume is True:
        resume = last_checkpoint(opts.output_dir)
        if resume is None:
            raise FileNotFoundError(f"no checkpoint-* folder in {opts.output_dir} to resume from")
    result = trainer.train(resume_from_checkpoint=resume or None)

    summary = {
        "output_dir": opts.output_dir, "stage": opts.stage, "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime"),
        "total_runtime_s": time.time() - start, "resumed_from": resume or None,
        "trainable_parameters": staged.trainable, "world_size": args.world_size,
        "distributed": str(trainer.accelerator.distributed_type).split(".")[-1],
        "wrapped_model": type(trainer.model_wrapped).__name__,
        "skipped_rows": getattr(train_set, "skipped", 0) + collator.skipped,
        "question_prior_turns": len(prior) if prior is not None else None,
    }
    if eval_set is not None:
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        done = evals and evals[-1]["step"] == trainer.state.global_step
        summary["eval"] = evals[-1] if done else trainer.evaluate()
    if opts.save_final:
        save_model(trainer, processor, opts.output_dir)  # every rank: ZeRO-3 gathers the weights collectively
    if opts.save_final and trainer.is_world_process_zero():
        write_loss_log(trainer.state.log_history, opts.output_dir)
        with open(os.path.join(opts.output_dir, "train_summary.json"), "w") as f:
            json.dump({**summary, "options": _jsonable(opts)}, f, indent=2, default=str)
    return summary


def train_per_expert(opts: TrainOptions) -> dict:
    """The ``prealign-experts`` stage: each expert with a projector of its own against the frozen LLM,
    one after the other (``max_steps`` and the time budget are split evenly), all trained in place
    in the mixture, which is then saved (its joint projector untouched: ``pretrain`` trains it next)."""
    import dataclasses

    from .prealign import single_expert_model

    start = time.time()
    if opts.max_steps is None:
        raise ValueError("stage 'prealign-experts' needs --max-steps (split evenly over the experts)")
    train_set = build_dataset(opts.data, opts.image_folder, on_error=opts.on_error, streaming=opts.streaming)
    rows = train_set.examples if isinstance(train_set, LlavaDataset) else _first_examples(train_set, 2000)
    model, processor = _load_model_and_processor(opts, rows, resolve_precision(opts.precision))
    experts = list(model.config.vision_config.expert_order)
    per_expert = {}
    for i, name in enumerate(experts):
        sub = single_expert_model(model, name, seed=opts.seed + i)
        sub_processor = copy.copy(processor)
        sub_processor.image_seq_length = sub.config.image_seq_length
        sub_opts = dataclasses.replace(
            opts, stage="prealign", output_dir=os.path.join(opts.output_dir, f"prealign-{name}"),
            max_steps=max(1, opts.max_steps // len(experts)), save_final=False, resume=False,
            time_budget_s=opts.time_budget_s / len(experts) if opts.time_budget_s else None)
        summary = train(sub_opts, model=sub, processor=sub_processor)
        per_expert[name] = {k: summary[k] for k in ("steps", "train_loss", "train_runtime_s")}
    model.config.use_cache = True
    summary = {"output_dir": opts.output_dir, "stage": opts.stage, "per_expert": per_expert,
               "steps": sum(v["steps"] for v in per_expert.values()), "total_runtime_s": time.time() - start}
    if opts.save_final:
        os.makedirs(opts.output_dir, exist_ok=True)
        model.save_pretrained(opts.output_dir)
        processor.save_pretrained(opts.output_dir)
        with open(os.path.join(opts.output_dir, "train_summary.json"), "w") as f:
            json.dump({**summary, "options": _jsonable(opts)}, f, indent=2, default=str)
    return summary


def save_model(trainer, processor, output_dir: str) -> None:
    """A folder that ``AutoModelForImageTextToText`` / ``AutoProcessor`` reload after ``import eagle_hf``;
    LoRA adapters are merged into the LLM first (not possible for a 4-bit LLM or under ZeRO-3, where
    the adapter folder is saved instead). Call it on every rank."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    mergeable = hasattr(model, "merge_and_unload") and not getattr(model, "is_loaded_in_4bit", False)
    if mergeable and not trainer.is_deepspeed_enabled:
        if trainer.is_world_process_zero():
            model.merge_and_unload().save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)


def write_loss_log(log_history: list[dict], output_dir: str) -> list[str]:
    """``loss.csv`` (step, training loss, eval loss) and, with matplotlib, ``loss.png``."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    path = os.path.join(output_dir, "loss.csv")
    with open(path, "w") as f:
        f.write("step,split,loss\n")
        for step, loss in train:
            f.write(f"{step},train,{loss}\n")
        for step, loss in evals:
            f.write(f"{step},eval,{loss}\n")
    written = [path]
    if train:
        plot = plot_losses({"train": train, "eval": evals}, os.path.join(output_dir, "loss.png"), styles={"eval": "o-"})
        written += [plot] if plot else []
    return written


def read_loss_log(output_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The ``(step, loss)`` series of a run's ``loss.csv``, by split (``train``, ``eval``)."""
    series: dict[str, list[tuple[int, float]]] = {"train": [], "eval": []}
    for line in (Path(output_dir) / "loss.csv").read_text().splitlines()[1:]:
        step, split, loss = line.split(",")
        series[split].append((int(step), float(loss)))
    return series


def plot_losses(series: dict[str, list[tuple[int, float]]], path: str | Path, ylabel: str = "loss",
                title: str | None = None, styles: dict[str, str] | None = None) -> str | None:
    """Named ``(step, loss)`` series on one log-scale plot; ``None`` where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, points in series.items():
        if points:
            ax.plot(*zip(*points), (styles or {}).get(label, "-"), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _first_examples(stream, n: int):
    from .data import parse_row

    out = []
    for index, row in enumerate(stream.rows):
        if len(out) >= n:
            break
        try:
            out.append(parse_row(row, stream.image_folder, index, check_files=False))
        except ValueError:
            continue
    return out


def _jsonable(opts: TrainOptions) -> dict:
    values = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name != "callbacks"}
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)) for k, v in values.items()}

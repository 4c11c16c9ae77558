"""``eagle-hf train``: fine-tune an EAGLE model on LLaVA-format data with the HF Trainer."""

import argparse
import json
import os

from ..training.stages import STAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--data", required=True,
                        help="training rows: a .json list, a .jsonl file, a `datasets.save_to_disk` folder or a "
                             "`datasets` name")
    parser.add_argument("--image-folder", help="folder the rows' relative image paths start from")
    parser.add_argument("--model", default="tiny",
                        help="a saved eagle-hf folder, or 'tiny' (random init, tokenizer learnt from --data)")
    parser.add_argument("--output-dir", required=True, help="checkpoints and the final model go here")
    parser.add_argument("--stage", default="finetune", choices=list(STAGES),
                        help="what trains: " + "; ".join(f"{s.name}: {s.description}" for s in STAGES.values()))
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    length.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float,
                        help="default: the original recipe's for the stage (2e-5 finetune, 1e-3 pretrain), 1e-3 for tiny")
    parser.add_argument("--projector-lr", type=float, help="learning rate of the projector (default: --learning-rate)")
    parser.add_argument("--expert-lr", type=float, help="learning rate of the vision experts (default: --learning-rate)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=0.03, help="warmup steps, or a fraction of all steps if < 1")
    parser.add_argument("--lr-scheduler", default="cosine")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="auto: bf16 on GPUs that support it, fp32 on the CPU")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (LLM and experts)")
    parser.add_argument("--deepspeed", help="DeepSpeed config json (see examples/)")
    parser.add_argument("--fsdp", metavar="CFG", help="train with FSDP (GPUs), configured by this json (see examples/)")
    parser.add_argument("--eval-data", help="rows for the evaluation loss during training")
    parser.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: --save-steps)")
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--save-total-limit", type=int, default=2)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--max-length", type=int, help="token budget per row (default: the model's)")
    parser.add_argument("--template", help="conversation template (default: the processor's)")
    parser.add_argument("--skip-malformed", action="store_true",
                        help="skip malformed rows with a warning instead of stopping at the first one")
    parser.add_argument("--streaming", action="store_true", help="stream the data (needs --max-steps)")
    parser.add_argument("--group-by-modality-length", action="store_true",
                        help="the original's batching: image and text-only rows in separate length-grouped batches")
    experts = parser.add_mutually_exclusive_group()
    experts.add_argument("--train-experts", dest="train_experts", action="store_true", default=None,
                         help="also train the vision experts (e.g. with --stage lora)")
    experts.add_argument("--freeze-experts", dest="train_experts", action="store_false",
                         help="keep the vision experts frozen whatever the stage")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--no-resume", dest="resume", action="store_false", default="auto",
                        help="start afresh even if --output-dir holds checkpoints (default: resume from the last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--time-budget", type=float,
                        help="minutes: anneal the learning rate over this wall-clock time and stop when it is spent")
    parser.add_argument("--question-prior", type=float, metavar="ALPHA",
                        help="train the model as a product with the question-only answer prior counted from --data "
                             "(add-ALPHA smoothing, e.g. 1), so that it learns what the image adds to the question "
                             "rather than the answers' text prior; the model is used alone afterwards")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def options_from_args(args: argparse.Namespace):
    from ..training.api import TrainOptions

    return TrainOptions(
        data=args.data, image_folder=args.image_folder, model=args.model, output_dir=args.output_dir,
        stage=args.stage, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        projector_lr=args.projector_lr, expert_lr=args.expert_lr, weight_decay=args.weight_decay,
        warmup=args.warmup, lr_scheduler=args.lr_scheduler, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, deepspeed=args.deepspeed,
        fsdp_config=args.fsdp, eval_data=args.eval_data, eval_steps=args.eval_steps,
        save_steps=args.save_steps, save_total_limit=args.save_total_limit, logging_steps=args.logging_steps,
        max_length=args.max_length, template=args.template, on_error="skip" if args.skip_malformed else "raise",
        streaming=args.streaming, group_by_modality_length=args.group_by_modality_length,
        train_experts=args.train_experts, lora_r=args.lora_r, lora_alpha=args.lora_alpha, resume=args.resume,
        seed=args.seed, num_workers=args.num_workers,
        time_budget_s=args.time_budget * 60 if args.time_budget else None, progress=args.progress,
        question_prior=args.question_prior,
    )


def run(args: argparse.Namespace) -> int:
    from ..training.api import train

    summary = train(options_from_args(args))
    if os.environ.get("RANK", "0") != "0":
        return 0  # one summary line per run, not per process
    print(json.dumps({k: v for k, v in summary.items() if k != "trainable_parameters"}, default=str))
    return 0

"""Fine-tune a saved EAGLE model with the stock ``transformers.Trainer``.

eagle-hf only supplies the data pieces (dataset + collator) and the stage helper; the loop is the
stock Trainer's, so DeepSpeed, FSDP and ``torchrun`` work as for any transformers model:

    # one process (CPU or one GPU)
    python examples/finetune_with_trainer.py --model MODEL_DIR --data train.json --image-folder images --output-dir out
    # 8 GPUs, DeepSpeed ZeRO-3
    torchrun --nproc_per_node 8 examples/finetune_with_trainer.py ... --deepspeed examples/ds_zero3.json
    # 8 GPUs, FSDP
    torchrun --nproc_per_node 8 examples/finetune_with_trainer.py ... --fsdp examples/fsdp_config.json
    # CPU-only machine, 2 processes, DDP over gloo
    torchrun --nproc_per_node 2 examples/finetune_with_trainer.py ...

``TrainingArguments`` is created *before* ``from_pretrained``: under ZeRO-3 transformers then builds
the model inside ``deepspeed.zero.Init`` and every parameter is partitioned as it is created (the
model's ``__init__`` materialises nothing beyond its own parameters, so this is safe).
"""

import argparse

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments

import eagle_hf  # noqa: F401  (registers EAGLE with the Auto classes)
from eagle_hf.training import EagleDataCollator, LlavaDataset, apply_stage, read_rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--image-folder")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--stage", default="finetune")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--deepspeed")
    p.add_argument("--fsdp", metavar="CFG", help="FSDP config json (GPUs)")
    args = p.parse_args()

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # 1. The arguments first (ZeRO-3 needs them before the model exists).
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        num_train_epochs=args.epochs, max_steps=args.max_steps, lr_scheduler_type="cosine", warmup_steps=0.03,
        bf16=bf16, activation_checkpointing=True, save_strategy="steps", save_steps=500, save_total_limit=1,
        logging_steps=10, report_to="none", remove_unused_columns=False, label_names=["labels"],
        deepspeed=args.deepspeed, fsdp=bool(args.fsdp), fsdp_config=args.fsdp,
        use_cpu=not torch.cuda.is_available(),  # a CPU-only torchrun launch is DDP over gloo only with this
    )
    # 2. Then the model and processor.
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    processor = AutoProcessor.from_pretrained(args.model)
    # 3. What trains (the stock Trainer optimises whatever requires grad, at one learning rate).
    model = apply_stage(model, args.stage, args.learning_rate).model

    train_set = LlavaDataset(read_rows(args.data), args.image_folder)
    collator = EagleDataCollator(processor, max_length=model.config.max_sequence_length)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, data_collator=collator,
                      processing_class=processor)
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()

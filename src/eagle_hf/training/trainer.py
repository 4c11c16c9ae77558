"""What the stock ``transformers.Trainer`` lacks for the EAGLE recipe, and nothing more.

* the original's ``group_by_modality_length`` batch order (``modality_lengths`` from the dataset);
* optimizer groups with separate learning rates per model part (:mod:`.stages`);
* an optional wall-clock budget: the learning rate follows a cosine over
  ``max(step / max_steps, elapsed / budget)`` and training stops when either runs out, so a run
  meant to take ten minutes anneals properly however busy the machine is;
* an optional question-only answer prior the loss is a product with (:mod:`.question_prior`).

Everything else (precision, gradient checkpointing, checkpoints and resume, evaluation, DDP, FSDP,
DeepSpeed) is the stock Trainer's.
"""

import math
import time

import torch
from transformers import Trainer, TrainerCallback

from ..atomic import pause_point
from .sampler import ModalityLengthGroupedSampler
from .stages import StageLRs, param_groups


class EagleTrainer(Trainer):
    def __init__(self, *args, stage_lrs: StageLRs | None = None, group_by_modality_length: bool = False,
                 time_budget_s: float | None = None, question_prior=None, **kwargs):
        self.stage_lrs = stage_lrs
        self.question_prior = question_prior
        self.group_by_modality_length = group_by_modality_length
        self.time_budget_s = time_budget_s
        self._budget = _Budget(time_budget_s) if time_budget_s else None
        super().__init__(*args, **kwargs)
        if self._budget is not None:
            self.add_callback(_BudgetCallback(self._budget))

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "modality_lengths", None)
        if self.group_by_modality_length and lengths is not None:
            return ModalityLengthGroupedSampler(
                lengths, batch_size=self.args.train_batch_size,
                world_size=self.args.world_size * self.args.gradient_accumulation_steps,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.question_prior is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        # The model's own causal-LM loss (its label masking, shift and normalisation over the
        # batch's tokens) on its logits plus the log prior: the product of the two distributions.
        # Evaluation losses during training are of the product too.
        base = self.accelerator.unwrap_model(model)
        logits = self.question_prior.add_to(outputs.logits, inputs["input_ids"], labels, inputs.get("attention_mask"))
        loss = base.loss_function(
            logits=logits, labels=base.mask_labels(labels, inputs["input_ids"], inputs.get("attention_mask")),
            vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens: scaled back as the stock compute_loss does.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss

    def _save_optimizer_and_scheduler(self, output_dir):
        # The checkpoint's weights are written, its optimizer and trainer state not yet: the
        # moment a kill leaves an incomplete checkpoint (tests/test_crash_safety.py kills here).
        pause_point("checkpoint-weights-saved")
        return super()._save_optimizer_and_scheduler(output_dir)

    def create_optimizer(self, model=None):
        if self.stage_lrs is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        # Groups are rebuilt from parameter names here, after any DDP/FSDP wrapping.
        groups = param_groups(opt_model, self.stage_lrs)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self._budget is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            warmup = self.args.get_warmup_steps(num_training_steps)
            budget = self._budget
            budget.max_steps = num_training_steps

            def factor(step: int) -> float:
                progress = budget.progress(step)
                warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
                return warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler


class _Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start, self.max_steps = seconds, None, None

    def progress(self, step: int) -> float:
        by_steps = step / self.max_steps if self.max_steps else 0.0
        by_time = (time.monotonic() - self.start) / self.seconds if self.start is not None else 0.0
        return max(by_steps, by_time)


class _BudgetCallback(TrainerCallback):
    def __init__(self, budget: _Budget):
        self.budget = budget

    def on_train_begin(self, args, state, control, **kwargs):
        self.budget.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.budget.progress(state.global_step) >= 1.0:
            control.should_training_stop = True
            control.should_save = True

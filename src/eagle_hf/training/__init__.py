"""Training EAGLE with the Hugging Face Trainer: data, collator, stages, sampler, CLI code path.

Importing this package needs only the core dependencies; LoRA stages import ``peft`` and
``datasets`` sources import ``datasets`` when used.
"""

from .api import TrainOptions, train
from .data import (
    EagleDataCollator,
    Example,
    LlavaDataset,
    LlavaIterableDataset,
    MalformedRowError,
    build_dataset,
    parse_row,
    read_rows,
)
from .evaluation import evaluate, generate_answers, score
from .sampler import ModalityLengthGroupedSampler
from .stages import STAGES, Stage, StageLRs, apply_stage, param_groups, part_of
from .trainer import EagleTrainer

__all__ = [
    "TrainOptions", "train", "EagleDataCollator", "Example", "LlavaDataset", "LlavaIterableDataset",
    "MalformedRowError", "build_dataset", "parse_row", "read_rows", "evaluate", "generate_answers", "score",
    "ModalityLengthGroupedSampler", "STAGES", "Stage", "StageLRs", "apply_stage", "param_groups", "part_of",
    "EagleTrainer",
]

"""Conversion of original NVlabs EAGLE checkpoints to native eagle-hf folders (``eagle-hf convert``)."""

from .checkpoint_io import CheckpointError, SourceCheckpoint, read_safetensors_header, write_safetensors
from .convert_eagle_weights_to_hf import (
    TEMPLATE_BY_VOCAB,
    convert_original_checkpoint,
    image_processor_kwargs,
    infer_template,
    plan_conversion,
)

__all__ = [
    "convert_original_checkpoint", "infer_template", "image_processor_kwargs", "plan_conversion",
    "TEMPLATE_BY_VOCAB", "CheckpointError", "SourceCheckpoint", "read_safetensors_header", "write_safetensors",
]

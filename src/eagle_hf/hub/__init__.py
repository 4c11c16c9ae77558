"""Hub releases: complete, self-describing model folders and their upload.

A release folder holds what `from_pretrained` and the image-text-to-text pipeline need
(config, safetensors weights, processor + tokenizer + chat template, generation config) and a
generated model card (README.md) whose YAML metadata the Hub indexes and whose usage snippet
runs as written. `export_for_remote_code` additionally writes the model and processor code
next to the weights, so the folder loads with ``trust_remote_code=True`` where eagle-hf is not
installed.

One module per concern: `card` (parameter counts, the model card), `release` (writing, exporting and
checking release folders), `upload` (the push). Their public names are re-exported here.
"""

from .card import (
    CARD_MARKER,
    DEFAULT_TAGS,
    card_is_generated,
    extract_python_blocks,
    human_count,
    infer_base_models,
    load_config,
    model_card,
    parameter_counts,
    usage_snippets,
    write_model_card,
)
from .release import (
    WEIGHT_INDEX,
    check_release,
    ensure_generation_config,
    export_folder_for_remote_code,
    export_for_remote_code,
    release_files,
    save_release,
)
from .upload import push_folder

__all__ = [
    "CARD_MARKER", "DEFAULT_TAGS", "WEIGHT_INDEX", "card_is_generated", "check_release", "ensure_generation_config",
    "export_folder_for_remote_code", "export_for_remote_code", "extract_python_blocks", "human_count",
    "infer_base_models", "load_config", "model_card", "parameter_counts", "push_folder", "release_files",
    "save_release", "usage_snippets", "write_model_card",
]

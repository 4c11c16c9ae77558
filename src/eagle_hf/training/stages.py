"""Training stages as data: which parts of an EAGLE model learn, and at which learning rate.

An EAGLE model has three parts, told apart by parameter name: the ``projector``
(``multi_modal_projector``), the vision ``experts`` (``vision_tower``) and the ``llm`` (language
model and LM head). A stage is one row of :data:`STAGES`; :func:`apply_stage` is the only code that
interprets it (freezing, LoRA wrapping) and returns the optimizer's parameter groups.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

PARTS = ("projector", "experts", "llm")
# LoRA goes on every linear layer of the LLM's blocks: the attention and MLP projections of the
# Llama/Qwen2/Mistral families (the LM head and embeddings stay as they are).
DEFAULT_LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def part_of(parameter_name: str) -> str:
    """Which part a parameter belongs to; robust to wrapper prefixes (``module.``, PEFT's
    ``base_model.model.``, FSDP's) because it looks for the component names anywhere."""
    if "multi_modal_projector" in parameter_name:
        return "projector"
    if "vision_tower" in parameter_name:
        return "experts"
    return "llm"


@dataclass(frozen=True)
class Stage:
    name: str
    trains: frozenset[str]
    lora: bool = False
    quantize_llm_bits: int | None = None
    description: str = ""
    # Each expert trains alone with a projector of its own (training.prealign), then they are combined.
    per_expert: bool = False

    def __post_init__(self):
        unknown = set(self.trains) - set(PARTS)
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown parts {sorted(unknown)}; parts are {PARTS}")
        if self.lora and "llm" in self.trains:
            raise ValueError(f"stage {self.name!r}: LoRA trains adapters on a frozen LLM; do not list 'llm'")


def _stage(name, trains, description, **kw) -> Stage:
    return Stage(name, frozenset(trains), description=description, **kw)


STAGES: dict[str, Stage] = {s.name: s for s in (
    _stage("pretrain", {"projector"}, "projector only; experts and LLM frozen (original stage 1)"),
    _stage("finetune", {"projector", "experts", "llm"},
           "everything trains, with separate projector and expert learning rates (original stage 2)"),
    _stage("prealign", {"projector", "experts"},
           "experts and projector with the LLM frozen, all experts at once"),
    _stage("prealign-experts", {"projector", "experts"},
           "the paper's pre-alignment: each expert with its own projector against the frozen LLM, one at a time, "
           "then combined in the mixture (train its joint projector next with 'pretrain')", per_expert=True),
    _stage("lora", {"projector"}, "LoRA adapters on the LLM, projector trained, experts frozen", lora=True),
    _stage("lora-experts", {"projector", "experts"}, "LoRA on the LLM with the experts and projector trained",
           lora=True),
    _stage("qlora", {"projector"}, "LoRA on a 4-bit LLM (bitsandbytes, CUDA only), projector trained",
           lora=True, quantize_llm_bits=4),
    _stage("qlora-experts", {"projector", "experts"}, "QLoRA with the experts and projector trained",
           lora=True, quantize_llm_bits=4),
)}


def get_stage(stage: str | Stage) -> Stage:
    if isinstance(stage, Stage):
        return stage
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return STAGES[stage]


@dataclass
class StageLRs:
    """Learning rates per part; ``None`` falls back to ``base``."""

    base: float
    projector: float | None = None
    experts: float | None = None
    weight_decay: float = 0.0

    def for_part(self, part: str) -> float:
        return {"projector": self.projector, "experts": self.experts}.get(part) or self.base


@dataclass
class StageResult:
    model: nn.Module
    param_groups: list[dict] = field(default_factory=list)
    trainable: dict[str, int] = field(default_factory=dict)


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def param_groups(model: nn.Module, lrs: StageLRs) -> list[dict]:
    """Optimizer groups over the *currently trainable* parameters, one per (part, decay) pair, each
    tagged with ``name``; built from names so it can be recomputed after DDP/FSDP wrapping."""
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part, no_decay = part_of(name), _no_decay(name, param)
        group = groups.setdefault((part, no_decay), {
            "name": f"{part}{'.no_decay' if no_decay else ''}", "params": [], "lr": lrs.for_part(part),
            "weight_decay": 0.0 if no_decay else lrs.weight_decay})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def apply_stage(model: nn.Module, stage: str | Stage, lrs: StageLRs | float = 1e-4, train_experts: bool | None = None,
                lora_config=None) -> StageResult:
    """Freeze/unfreeze ``model`` for ``stage`` (wrapping it with PEFT LoRA for LoRA stages) and
    return the model to train with its parameter groups.

    ``train_experts`` overrides the stage's choice for the vision experts. LoRA stages keep the
    trained non-LoRA parts in PEFT's ``modules_to_save`` so that adapter checkpoints hold them.
    """
    stage = get_stage(stage)
    lrs = lrs if isinstance(lrs, StageLRs) else StageLRs(base=float(lrs))
    trains = set(stage.trains)
    if train_experts is not None:
        trains = trains | {"experts"} if train_experts else trains - {"experts"}
    if stage.lora:
        model = _wrap_lora(model, trains, lora_config)
    else:
        for name, param in model.named_parameters():
            param.requires_grad_(part_of(name) in trains)
    for param in unused_parameters(model):
        param.requires_grad_(False)
    if hasattr(model, "config"):
        model.config.use_cache = False
    trainable: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            trainable[part_of(name)] = trainable.get(part_of(name), 0) + param.numel()
    if not trainable:
        raise ValueError(f"stage {stage.name!r} leaves nothing to train")
    return StageResult(model, param_groups(model, lrs), trainable)


def unused_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters the configuration leaves out of every forward pass. Left trainable they never
    get a gradient, which DDP without ``find_unused_parameters`` (the Trainer's choice whenever
    gradient checkpointing is on) treats as an error. Each expert declares its own."""
    from ..modeling.registry import VisionExpertMixin

    unused = []
    for module in model.modules():
        if isinstance(module, VisionExpertMixin):
            unused += module.unused_parameters()
    return unused


def default_lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str | list[str] | None = None):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or DEFAULT_LORA_TARGETS)


def _wrap_lora(model: nn.Module, trains: set[str], lora_config) -> nn.Module:
    try:
        from peft import get_peft_model
    except ImportError as err:
        raise ImportError("LoRA stages need `peft` (pip install 'eagle-hf[train]')") from err
    config = lora_config if lora_config is not None else default_lora_config()
    # Fully trained parts are kept (and saved) as PEFT "modules to save".
    keep = {"projector": "multi_modal_projector", "experts": "vision_tower"}
    config.modules_to_save = sorted({keep[p] for p in trains} | set(config.modules_to_save or []))
    # No task_type: PEFT's generic wrapper forwards pixel_values and generate() untouched.
    config.task_type = None
    for param in model.parameters():
        param.requires_grad_(False)
    return get_peft_model(model, config)

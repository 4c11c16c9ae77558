"""Convert an original NVlabs EAGLE checkpoint (``model_type: eagle_llama``) to a native eagle-hf folder.

The key table is the declarative one the direct loader uses (`legacy_renamings`), so a converted
folder and a directly loaded original hold the same tensors. Tensors are streamed one at a time
from the source files into the output shards (a 34B checkpoint never sits in memory), checked
strictly against the key set of the native model built on the meta device, and the folder only
appears at its destination once everything has been written.
"""

import json
import math
import os
import re
import warnings
from pathlib import Path

import torch

from ..modeling.configuration_eagle import EagleVLConfig
from ..modeling.expert_eva import eva_rope_table
from ..atomic import atomic_folder, pause_point
from ..dtypes import parse_dtype
from ..hub import parameter_counts, write_model_card
from ..processing import IMAGE_TOKEN
from .legacy_eagle_llama import EagleLlamaConfig, rename_legacy_keys
from ..modeling.modeling_eagle import EagleVLForConditionalGeneration
from .checkpoint_io import (
    SourceCheckpoint,
    nbytes,
    parse_size,
    plan_shards,
    shard_names,
    write_index,
    write_safetensors,
)

# Chat template implied by the LLM vocabulary when --template is not given: the released
# checkpoints pair each base LLM with one template (scripts of the original repository):
#   32000            Vicuna-7B/13B v1.5 (Eagle-X4/X5-7B/13B)        -> vicuna_v1
#   128256 / 128257  Llama-3-8B-Instruct (+<pad>, Eagle-X4-8B-Plus)  -> llama3
#   64000            Nous-Hermes-2-Yi-34B (Eagle-X5-34B)            -> yi_34b_chatml_direct
TEMPLATE_BY_VOCAB = {32000: "vicuna_v1", 128256: "llama3", 128257: "llama3", 64000: "yi_34b_chatml_direct"}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "tiktoken.model")
_ROPE_TABLE = re.compile(r"\.rope_(win|glb)\.freqs_(cos|sin)$")
_ROPE_ALIAS = re.compile(r"\.blocks\.\d+\.attn\.rope\.freqs_(cos|sin)$")


def infer_template(config: EagleVLConfig) -> str | None:
    """Name of the chat template the checkpoint's LLM implies (see `TEMPLATE_BY_VOCAB`), or None."""
    return TEMPLATE_BY_VOCAB.get(config.text_config.vocab_size)


def _expected_tensors(config: EagleVLConfig) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], dict[str, int]]:
    """Every persistent tensor of the native model (built on the meta device: no memory) and
    its parameter counts per part (`eagle_hf.hub.parameter_counts`, for the model card)."""
    with torch.device("meta"):
        model = EagleVLForConditionalGeneration(config)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)  # saved once, under the embedding
    return expected, parameter_counts(model)


def _listing(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:limit])
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n  {shown}{more}"


def plan_conversion(source: SourceCheckpoint, legacy: EagleLlamaConfig, native: EagleVLConfig) -> tuple[dict, dict]:
    """Map native key -> original key (or a computed value) and check the result strictly.

    Returns (plan, counts): plan[native_key] is the original key, or a tensor for an EVA RoPE
    table the source does not carry (they are derived; computed exactly as the model's init).
    """
    expected, counts = _expected_tensors(native)
    mapping = rename_legacy_keys(source.keys(), legacy)
    plan: dict[str, str | torch.Tensor] = {}
    collisions, unexpected, dropped = [], [], []
    for original, target in mapping.items():
        if target is None:
            dropped.append(original)
        elif target in plan:
            collisions.append(f"{plan[target]} and {original} -> {target}")
        elif target not in expected:
            if native.tie_word_embeddings and target == "lm_head.weight":
                continue
            unexpected.append(f"{original} (-> {target})" if target != original else original)
        else:
            plan[target] = original
    if collisions:
        raise ValueError(f"{source.folder}: several original tensors map to one native name:{_listing(collisions)}")
    if unexpected:
        raise ValueError(
            f"{source.folder} holds {len(unexpected)} tensors that this EAGLE model (mm_vision_tower "
            f"{legacy.legacy_vision_tower!r}) does not have:{_listing(unexpected)}"
        )
    missing = [k for k in expected if k not in plan]
    for key in [k for k in missing if _ROPE_TABLE.search(k)]:
        shape, _ = expected[key]
        # A file that only kept per-block aliases still carries the saved table: prefer it.
        kind = _ROPE_TABLE.search(key).group(2)
        # (There is one EVA expert, so any per-block alias of the right shape is its table.)
        alias = next((o for o in dropped if _ROPE_ALIAS.search(o) and o.endswith(f"freqs_{kind}")
                      and source.info(o).shape == shape), None)
        if alias is not None:
            plan[key] = alias
        else:
            eva = native.vision_config.expert_config("eva")
            cos, sin = eva_rope_table(math.isqrt(shape[0]), shape[1], eva.rope_theta, eva.rope_pt_seq_len)
            plan[key] = cos if kind == "cos" else sin
        missing.remove(key)
    if missing:
        groups: dict[str, int] = {}
        for key in missing:
            part = key.split(".")
            group = part[2] if part[:2] == ["model", "vision_tower"] else part[1] if part[0] == "model" else part[0]
            groups[group] = groups.get(group, 0) + 1
        summary = ", ".join(f"{g}: {n}" for g, n in groups.items())
        raise ValueError(
            f"{source.folder} is missing {len(missing)} weights of this EAGLE model (mm_vision_tower "
            f"{legacy.legacy_vision_tower!r}; by part: {summary}):{_listing(missing)}"
        )
    wrong = []
    for key, origin in plan.items():
        shape = tuple(origin.shape) if isinstance(origin, torch.Tensor) else source.info(origin).shape
        if shape != expected[key][0]:
            name = origin if isinstance(origin, str) else key
            wrong.append(f"{name}: {list(shape)}, expected {list(expected[key][0])}")
    if wrong:
        raise ValueError(f"{source.folder}: tensors with the wrong shape for this config:{_listing(wrong)}")
    # Native order = source order, so reading walks each source file front to back.
    order = {k: i for i, k in enumerate(expected)}
    source_order = {o: i for i, o in enumerate(source.keys())}
    ordered = sorted(plan, key=lambda k: (source_order.get(plan[k], math.inf) if isinstance(plan[k], str)
                                          else math.inf, order[k]))
    return {k: plan[k] for k in ordered}, counts


def convert_original_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | torch.dtype | None = None,
                                template: str | None = None, max_shard_size: int | str = "5GB",
                                overwrite: bool = False, progress: bool = True) -> Path:
    """Convert the original checkpoint folder ``src`` into a native eagle-hf folder ``dst``.

    ``dtype``: cast floating tensors (default: keep the source's). ``template``: chat template
    name (default: `infer_template`). Raises ``ValueError`` for a config or checkpoint that does
    not describe a loadable EAGLE model (listing offending keys), ``FileNotFoundError`` for a
    missing folder, ``FileExistsError`` when ``dst`` is a non-empty folder and not ``overwrite``.
    ``dst`` is written atomically: on any error it is left as it was.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a checkpoint folder (no config.json)")
    out_dtype = parse_dtype(dtype)
    max_shard = parse_size(max_shard_size)
    if template is not None:
        from ..processing import get_template

        get_template(template)  # an unknown name fails before minutes of writing
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{dst} already exists and is not empty (pass --overwrite to replace it)")

    raw = json.loads((src / "config.json").read_text())
    if raw.get("model_type") == EagleVLConfig.model_type:
        raise ValueError(f"{src} is already a native eagle-hf ({EagleVLConfig.model_type}) checkpoint")
    try:
        legacy = EagleLlamaConfig.from_pretrained(src)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{src}/config.json: {err}") from err
    native = EagleVLConfig.from_dict(legacy.native_dict())
    source = SourceCheckpoint(src)
    plan, counts = plan_conversion(source, legacy, native)

    # The config's dtype must describe the tensors as written (the original's torch_dtype may not).
    float_dtypes = {source.info(o).dtype for o in plan.values()
                    if isinstance(o, str) and source.info(o).dtype.is_floating_point}
    written_dtype = out_dtype or (next(iter(float_dtypes)) if len(float_dtypes) == 1 else None)
    if written_dtype is None and legacy.dtype is not None:
        written_dtype = legacy.dtype if isinstance(legacy.dtype, torch.dtype) else parse_dtype(legacy.dtype)

    def out_type(origin) -> torch.dtype:
        src_dtype = origin.dtype if isinstance(origin, torch.Tensor) else source.info(origin).dtype
        if out_dtype is not None and src_dtype.is_floating_point:
            return out_dtype
        if isinstance(origin, torch.Tensor) and written_dtype is not None:
            return written_dtype
        return src_dtype

    specs = [(k, tuple(o.shape) if isinstance(o, torch.Tensor) else source.info(o).shape, out_type(o))
             for k, o in plan.items()]
    shards = plan_shards(specs, max_shard_bytes=max_shard)
    names = shard_names(len(shards))

    # Written into a temp sibling and published in one atomic step (`eagle_hf.atomic`); temp
    # folders of killed runs are removed here, by the next run.
    with atomic_folder(dst, keep_existing=False) as tmp:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(nbytes(s, d) for _, s, d in specs), unit="B", unit_scale=True,
                   desc=f"converting {src.name}", disable=not progress)
        dtypes = dict((k, d) for k, _, d in specs)

        def produce(name: str) -> torch.Tensor:
            origin = plan[name]
            tensor = origin if isinstance(origin, torch.Tensor) else source.get(origin)
            return tensor.to(dtypes[name])

        for shard, file in zip(shards, names):
            write_safetensors(tmp / file, shard, produce, on_tensor=lambda _, n: bar.update(n))
            pause_point("convert-shard-written")
        bar.close()
        if len(shards) > 1:
            write_index(tmp, shards, names)

        native.architectures = [EagleVLForConditionalGeneration.__name__]
        if written_dtype is not None:
            native.dtype = written_dtype
        native.save_pretrained(tmp)
        _save_generation_config(src, native, tmp)
        template_name = template or infer_template(native)
        saved_tokenizer = _save_processors(src, native, legacy, tmp, template_name)
        write_model_card(tmp, repo_id=str(dst), counts=counts, model_name=f"{src.name} (eagle-hf)",
                         provenance=_provenance(src, legacy, written_dtype, out_dtype is not None, saved_tokenizer))
    return dst


def _save_generation_config(src: Path, native: EagleVLConfig, out: Path) -> None:
    from transformers import GenerationConfig

    if (src / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(src)
    else:
        text = native.text_config
        generation = GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                                      pad_token_id=text.pad_token_id)
    generation.save_pretrained(out)


def image_processor_kwargs(config: EagleVLConfig) -> dict:
    """Image processor settings an original config implies: the experts' shared input size,
    their normalisation, and padding to a square for ``image_aspect_ratio == "pad"`` (what the
    original ``process_images`` did; other values fall back to its shortest-edge resize + crop)."""
    vision = config.vision_config
    return dict(size=vision.image_size, image_mean=list(vision.image_mean), image_std=list(vision.image_std),
                pad_to_square=getattr(config, "image_aspect_ratio", None) == "pad")


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES if name != "tokenizer_config.json")


def _save_processors(src: Path, native: EagleVLConfig, legacy: EagleLlamaConfig, out: Path,
                     template_name: str | None) -> bool:
    from ..processing import EagleImageProcessor

    image_processor = EagleImageProcessor(**image_processor_kwargs(legacy))
    image_processor.save_pretrained(out)
    if not has_tokenizer(src):
        warnings.warn(f"{src} has no tokenizer files: only the image processor is saved; copy the base LLM's "
                      "tokenizer and build the processor yourself", stacklevel=3)
        return False
    from transformers import AutoTokenizer

    from ..processing import EagleProcessor

    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except Exception as err:  # tokenizer loading raises many types; the cause is always "this folder"
        raise ValueError(f"{src}: the tokenizer files cannot be loaded ({type(err).__name__}: {err})") from err
    # The original vocabularies have no image token: the processor adds "<image>" as the next free
    # id, which must be the id the model scatters image features into (legacy parsing: vocab_size).
    processor = EagleProcessor(image_processor=image_processor, tokenizer=tokenizer, template_name=template_name,
                               image_token=IMAGE_TOKEN, image_seq_length=native.image_seq_length)
    if processor.image_token_id != native.image_token_id:
        raise ValueError(
            f"{src}: the tokenizer gives {IMAGE_TOKEN} the id {processor.image_token_id}, but the model expects "
            f"image_token_id {native.image_token_id} (= the LLM vocab_size, the first id after the original "
            f"vocabulary); the tokenizer has {len(tokenizer)} tokens, so it does not belong to this checkpoint"
        )
    if template_name is None:
        warnings.warn(f"no chat template is known for an LLM vocabulary of {native.text_config.vocab_size}; "
                      "the processor is saved without one (pass --template to choose one)", stacklevel=3)
    processor.save_pretrained(out)
    return True


def _provenance(src: Path, legacy: EagleLlamaConfig, dtype: torch.dtype | None, cast: bool,
                with_tokenizer: bool) -> str:
    """The converted folder's model card paragraph on its source (the rest is `hub.model_card`'s)."""
    dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else "as saved"
    text = (f"Converted by `eagle-hf convert` from the original [NVlabs EAGLE](https://github.com/NVlabs/EAGLE) "
            f"checkpoint `{src.name}` (`mm_vision_tower` = `{legacy.legacy_vision_tower}`). Weights are unchanged "
            f"apart from renaming{f' and the cast to {dtype_name}' if cast else ''}; they are stored as "
            f"`{dtype_name}` safetensors.")
    if not with_tokenizer:
        text += (" The source folder had no tokenizer: only the image processor is included (load it with "
                 "`AutoImageProcessor`; the snippets below need a processor built with the base LLM's tokenizer).")
    return text

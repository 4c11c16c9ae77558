"""Release folders: ``save_pretrained`` of model and processor with generation config and model card,
published atomically; the ``trust_remote_code`` export; listing and checking what a folder holds."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .card import _auto_map, write_model_card

WEIGHT_INDEX = "model.safetensors.index.json"


def ensure_generation_config(model, processor=None) -> None:
    """Fill the special-token ids that generation and batching need from the tokenizer."""
    gen = model.generation_config
    tokenizer = getattr(processor, "tokenizer", None)
    text = model.config.get_text_config()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, name, None) is None:
            value = getattr(tokenizer, name, None) if tokenizer is not None else None
            if value is None:
                value = getattr(text, name, None)
            if value is not None:
                setattr(gen, name, value)
    if gen.pad_token_id is None and gen.eos_token_id is not None:
        eos = gen.eos_token_id
        gen.pad_token_id = eos[0] if isinstance(eos, list) else eos


@contextmanager
def _left_padding(processor):
    tokenizer = getattr(processor, "tokenizer", None)
    old = getattr(tokenizer, "padding_side", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    try:
        yield
    finally:
        if tokenizer is not None and old is not None:
            tokenizer.padding_side = old


def save_release(model, processor, out_dir: str | os.PathLike, *, repo_id: str | None = None,
                 max_shard_size: str | int = "5GB", model_card: bool = True, **card_kwargs) -> list[str]:
    """``save_pretrained`` of model and processor, generation config and model card; the
    tokenizer is saved with left padding, which batched generation needs. Returns the files."""
    from ..atomic import atomic_folder, pause_point

    _check_native(model)
    out = Path(out_dir)
    ensure_generation_config(model, processor)
    # One temp folder for all parts, published at once: a kill never leaves new weights next
    # to an old or half-written processor.
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        pause_point("release-model-saved")
        with _left_padding(processor):
            processor.save_pretrained(tmp)
        if model_card:
            write_model_card(tmp, model, processor, repo_id=repo_id or str(out), **card_kwargs)
        problems = check_release(tmp)
        if problems:
            raise RuntimeError(f"the release for {out} is incomplete: {'; '.join(problems)}")
    return release_files(out)


def _check_native(model) -> None:
    if getattr(model.config, "model_type", None) != "eagle_vl":
        raise ValueError(f"releases are written from native eagle_vl models; this is {model.config.model_type!r} "
                         "(convert original EAGLE checkpoints with `eagle-hf convert` first)")


@contextmanager
def _auto_classes(pairs, objects):
    """register_for_auto_class for the duration of a save. It sets a class attribute, and the
    save records ``auto_map`` on the saved objects; left behind, every later save in this
    process would write code files or an ``auto_map`` that points at files it did not write."""
    saved = [(cls, cls.__dict__.get("_auto_class", _MISSING)) for cls, _ in pairs]
    # Copies: save_pretrained adds its entries to an existing auto_map in place.
    maps = [(obj, dict(obj.auto_map) if isinstance(obj.__dict__.get("auto_map"), dict) else
             obj.__dict__.get("auto_map", _MISSING)) for obj in objects]
    try:
        for cls, auto in pairs:
            cls.register_for_auto_class(auto)
        yield
    finally:
        for owner, attr, old in [(c, "_auto_class", o) for c, o in saved] + [(o, "auto_map", m) for o, m in maps]:
            if old is _MISSING:
                if attr in owner.__dict__:
                    delattr(owner, attr)
            else:
                setattr(owner, attr, old)


_MISSING = object()
_REMOTE_PACKAGES = ("eagle_hf.modeling.", "eagle_hf.processing.")


def export_for_remote_code(model, processor, out_dir: str | os.PathLike, **release_kwargs) -> list[str]:
    """A release folder that loads with ``trust_remote_code=True`` without eagle-hf installed.

    The classes are registered with ``register_for_auto_class`` so that ``save_pretrained``
    writes ``auto_map`` entries and copies the defining modules (and, recursively, their
    single-dot sibling imports) next to the weights.
    """
    _check_native(model)
    vision = model.config.vision_config
    outside = {}
    for name in vision.expert_order:
        module = type(getattr(model.model.vision_tower, name)).__module__
        if not module.startswith(_REMOTE_PACKAGES[0]):
            outside[name] = module
    if outside:
        raise ValueError("remote code can only carry the experts defined in eagle_hf.modeling; "
                         f"these come from elsewhere: {outside}")
    classes = [
        (type(model.config), "AutoConfig"),
        (type(model), "AutoModelForImageTextToText"),
        (type(processor), "AutoProcessor"),
        (type(processor.image_processor), "AutoImageProcessor"),
    ]
    for cls, _ in classes:
        if not cls.__module__.startswith(_REMOTE_PACKAGES):
            raise ValueError(f"{cls.__name__} is defined in {cls.__module__}, outside the flat eagle_hf.modeling / "
                             "eagle_hf.processing folders, so its code cannot travel with the weights")
    with _auto_classes(classes, [model.config, processor, processor.image_processor]):
        # The base model too: vLLM's Transformers backend builds it with AutoModel.from_config.
        base = type(model.model)
        model.config.auto_map = {**(model.config.auto_map or {}),
                                 "AutoModel": f"{base.__module__.rsplit('.', 1)[-1]}.{base.__name__}"}
        files = save_release(model, processor, out_dir, remote_code=True, **release_kwargs)
    return files


def release_files(folder: str | os.PathLike) -> list[str]:
    """Every file that an upload of ``folder`` sends, relative and sorted (hidden files and
    caches are left out, as upload_folder's ignore patterns would)."""
    folder = Path(folder)
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            files.append(rel.as_posix())
    return sorted(files)


def check_release(folder: str | os.PathLike) -> list[str]:
    """What a complete release lacks (empty list: complete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    files = set(release_files(folder))
    problems = []
    if "config.json" not in files:
        problems.append("config.json is missing")
    if WEIGHT_INDEX in files:
        index = json.loads((folder / WEIGHT_INDEX).read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if s not in files]
        if missing:
            problems.append(f"weight shards listed in {WEIGHT_INDEX} are missing: {', '.join(missing)}")
    elif "model.safetensors" not in files:
        legacy = [f for f in files if f.endswith(".bin")]
        problems.append("no safetensors weights (model.safetensors or a sharded index)"
                        + (f"; found {', '.join(legacy)}: re-save with save_pretrained" if legacy else ""))
    if "processor_config.json" not in files and "preprocessor_config.json" not in files:
        problems.append("processor_config.json is missing (save the processor with save_pretrained)")
    if "tokenizer.json" not in files and "tokenizer.model" not in files:
        problems.append("tokenizer files are missing")
    if "tokenizer_config.json" not in files:
        problems.append("tokenizer_config.json is missing")
    if "chat_template.jinja" not in files and "chat_template.json" not in files:
        problems.append("chat_template.jinja is missing")
    if "generation_config.json" not in files:
        problems.append("generation_config.json is missing")
    if "README.md" not in files:
        problems.append("README.md (model card) is missing")
    auto_map = _auto_map(folder)
    for target in auto_map.values():
        for ref in ([target] if isinstance(target, str) else [t for t in target if t]):
            module = ref.split("--")[-1].rsplit(".", 1)[0] + ".py"
            if module not in files:
                problems.append(f"auto_map names {ref} but {module} is missing")
    return problems


def export_folder_for_remote_code(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                                  **release_kwargs) -> Path:
    """Load a native release folder and re-save it as a remote-code folder (``dst`` defaults to
    a new temporary folder)."""
    import eagle_hf  # noqa: F401
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(src), dtype="auto")
    processor = AutoProcessor.from_pretrained(str(src))
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="eagle-hf-remote-"))
    export_for_remote_code(model, processor, dst, **release_kwargs)
    return dst

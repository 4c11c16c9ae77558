"""Batched greedy answering of LLaVA-format questions, and exact-match scoring.

Each row's prompt is every turn before its last answer (earlier answers included, so multi-turn
rows are asked their last question in context), rendered with the processor's template and a
generation prompt, left-padded so a batch's answers all start at the same position.
"""

from collections import defaultdict
from collections.abc import Sequence

import torch
from PIL import Image

from ..processing import get_template, load_image_rgb, render
from .data import Example


def normalize_answer(text: str) -> str:
    return text.strip().lower()


def stop_token_ids(processor, template: str, model=None) -> list[int]:
    """EOS ids of the model's generation config and the tokenizer, plus the template's stop string
    when it is a single token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``)."""
    tok = processor.tokenizer
    ids = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    ids.append(tok.eos_token_id)
    stop = get_template(template).stop_str
    if stop and stop.strip():
        stop_id = tok.convert_tokens_to_ids(stop.strip())
        if stop_id is not None and stop_id != tok.unk_token_id:
            ids.append(stop_id)
    return list(dict.fromkeys(i for i in ids if i is not None))


def _blank_like(image: Image.Image, processor) -> Image.Image:
    mean = getattr(processor.image_processor, "image_mean", (0.5, 0.5, 0.5))
    return Image.new("RGB", image.size, tuple(int(255 * m) for m in mean))


@torch.no_grad()
def generate_answers(model, processor, examples: Sequence[Example], batch_size: int = 16, max_new_tokens: int = 16,
                     template: str | None = None, blank_images: bool = False, progress: bool = False) -> list[str]:
    """Greedy answers to the last question of each example. ``blank_images`` replaces every image
    by a uniform image of the normalisation mean colour: the model then sees the question only."""
    template = template or processor.template_name
    stop = get_template(template).stop_str
    eos = stop_token_ids(processor, template, model)
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else eos[0]
    was_training = model.training
    model.eval()
    answers: list[str] = []
    batches = range(0, len(examples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="eval", unit="batch")
    device = next(model.parameters()).device
    for start in batches:
        chunk = examples[start:start + batch_size]
        texts, images = [], []
        for ex in chunk:
            messages, _ = ex.prompt_and_answer()
            texts.append(render(template, messages, add_generation_prompt=True, image_token=processor.image_token))
            loaded = [load_image_rgb(src) for src in ex.images]
            images.append([_blank_like(im, processor) for im in loaded] if blank_images else loaded)
        has_images = any(images)
        inputs = processor(text=texts, images=images if has_images else None, padding=True, padding_side="left",
                           return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=pad_id)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
            if stop and stop.strip() and stop in text:
                text = text.split(stop)[0]
            answers.append(text.strip())
    model.train(was_training)
    return answers


def score(predictions: Sequence[str], examples: Sequence[Example]) -> dict:
    """``exact_match`` (strip + lower-case equality) and ``n`` overall, and per row ``type`` when
    rows carry one."""
    per_type: dict[str, list[bool]] = defaultdict(list)
    hits = []
    for pred, ex in zip(predictions, examples, strict=True):
        reference = ex.prompt_and_answer()[1]
        if reference is None:
            raise ValueError(f"row {ex.id!r} has no reference answer (its last turn is not from gpt)")
        hit = normalize_answer(pred) == normalize_answer(reference)
        hits.append(hit)
        if ex.type is not None:
            per_type[str(ex.type)].append(hit)
    result = {"exact_match": sum(hits) / len(hits) if hits else 0.0, "n": len(hits)}
    if per_type:
        result["per_type"] = {t: {"exact_match": sum(v) / len(v), "n": len(v)} for t, v in sorted(per_type.items())}
    return result


def format_table(results: dict[str, dict]) -> str:
    """A per-type accuracy table; ``results`` maps a column name (e.g. "image", "text-only") to
    the output of :func:`score`."""
    names = list(results)
    types = sorted({t for r in results.values() for t in r.get("per_type", {})})
    rows = [("type", *names, "n")]
    for t in types:
        rows.append((t, *[f"{results[n]['per_type'][t]['exact_match']:.3f}" for n in names],
                     str(next(iter(results.values()))["per_type"][t]["n"])))
    rows.append(("all", *[f"{results[n]['exact_match']:.3f}" for n in names], str(next(iter(results.values()))["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def load_for_eval(model_dir: str, device: str | None = None, dtype: torch.dtype | None = None):
    """A saved eagle-hf folder as (model, processor), ready for :func:`generate_answers`."""
    import eagle_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..inference import check_model_folder
    from ..modeling.validation import check_processor_matches_model

    check_model_folder(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    check_processor_matches_model(processor, model.config, where=f"the processor in {model_dir}")
    return model, processor


def evaluate(model, processor, data, image_folder=None, batch_size: int = 16, max_new_tokens: int = 16,
             blank_images: bool = False, limit: int | None = None, on_error: str = "raise",
             progress: bool = False, template: str | None = None) -> tuple[dict, list[dict]]:
    """Score a model on LLaVA rows: ``(scores, predictions)``; each prediction is
    ``{"id", "type", "prediction", "answer", "correct"}``."""
    from .data import build_dataset

    dataset = build_dataset(data, image_folder, on_error=on_error)
    examples = dataset.examples[:limit] if limit else dataset.examples
    answers = generate_answers(model, processor, examples, batch_size, max_new_tokens, template=template,
                               blank_images=blank_images, progress=progress)
    scores = score(answers, examples)
    predictions = [{"id": ex.id, "type": ex.type, "prediction": a, "answer": ex.prompt_and_answer()[1],
                    "correct": normalize_answer(a) == normalize_answer(ex.prompt_and_answer()[1] or "")}
                   for ex, a in zip(examples, answers)]
    return scores, predictions

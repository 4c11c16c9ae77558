"""LLaVA-format training data: reading, validation, and the collator that builds model inputs.

A row is ``{"id", "image" (optional; a path, a list of paths, or an image object), "conversations":
[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``. Rows become
Hugging Face chat messages here and are rendered with the processor's conversation template in the
collator, so labels come from the same renderer that inference uses.

Validation happens before training starts for map-style data (a bad row found after hours of
training is the expensive kind) and on the fly for streamed data; a malformed row either stops
everything with an error naming its id, or, with ``on_error="skip"``, is dropped with a warning and
counted in ``skipped``.
"""

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..processing import IGNORE_INDEX, IMAGE_TOKEN, load_image_rgb, render_with_spans

logger = logging.getLogger(__name__)

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# The original counted 128 words for an image when grouping by length; kept so that a mix of
# image and text rows is grouped the way the released recipe grouped it.
IMAGE_LENGTH_BONUS = 128


class MalformedRowError(ValueError):
    """A data row that cannot be trained on; the message starts with the row id."""

    def __init__(self, row_id: Any, reason: str):
        self.row_id, self.reason = row_id, reason
        super().__init__(f"row {row_id!r}: {reason}")


@dataclass
class Example:
    """One validated row: chat ``messages`` (images as ``{"type": "image"}`` items) and the image
    sources in placeholder order (resolved paths, PIL images or encoded bytes)."""

    id: Any
    messages: list[dict]
    images: list[Any] = field(default_factory=list)
    type: str | None = None

    @property
    def has_image(self) -> bool:
        return bool(self.images)

    def prompt_and_answer(self) -> tuple[list[dict], str | None]:
        """For evaluation: every message before the last answer, and that answer (``None`` when the
        row ends with a question)."""
        if self.messages[-1]["role"] == "assistant":
            return self.messages[:-1], _text_of(self.messages[-1])
        return self.messages, None


def _text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(item.get("text", "") for item in content if item.get("type") == "text")


def _image_sources(row: dict) -> list[Any]:
    image = row.get("image", row.get("images"))
    if image is None or image == "" or image == []:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _resolve(source: Any, image_folder: str | Path | None) -> Any:
    if isinstance(source, dict):  # a `datasets` Image column read with decode=False
        if source.get("bytes"):
            return source["bytes"]
        source = source.get("path")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_absolute() and image_folder is not None:
            path = Path(image_folder) / path
        return str(path)
    return source


def parse_row(row: dict, image_folder: str | Path | None = None, index: int | None = None,
              check_files: bool = True, require_answer: bool = True) -> Example:
    """Validate one LLaVA row and turn it into an :class:`Example`; raise :class:`MalformedRowError`."""
    row_id = row.get("id", f"#{index}" if index is not None else "?")
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise MalformedRowError(row_id, "no 'conversations' list")
    images = [_resolve(s, image_folder) for s in _image_sources(row)]

    messages, placeholders = [], 0
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise MalformedRowError(row_id, f"turn {k} is not a {{'from': ..., 'value': str}} object")
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise MalformedRowError(row_id, f"turn {k} is from {turn.get('from')!r}; expected human, gpt or system")
        if role == "system":
            if k != 0:
                raise MalformedRowError(row_id, f"turn {k} is a system turn; only the first turn may be one")
            messages.append({"role": "system", "content": turn["value"]})
            continue
        expected = "user" if sum(m["role"] != "system" for m in messages) % 2 == 0 else "assistant"
        if role != expected:
            raise MalformedRowError(row_id, f"turn {k} is from {turn['from']!r} but turns must alternate human/gpt "
                                            "starting with human")
        text = turn["value"]
        n = text.count(IMAGE_TOKEN)
        placeholders += n
        if n:
            # As the original training did: the image goes in front of its message, text stripped.
            text = text.replace(IMAGE_TOKEN, "").strip()
        messages.append({"role": role, "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]})
    if not any(m["role"] == "user" for m in messages):
        raise MalformedRowError(row_id, "no human turn")
    if require_answer and not any(m["role"] == "assistant" for m in messages):
        raise MalformedRowError(row_id, "no gpt turn to learn from")
    if placeholders != len(images):
        raise MalformedRowError(
            row_id, f"{placeholders} {IMAGE_TOKEN} placeholder(s) in the turns but {len(images)} image(s); "
                    "every image needs exactly one placeholder")
    if check_files:
        for source in images:
            if isinstance(source, str) and not os.path.isfile(source):
                raise MalformedRowError(row_id, f"image file not found: {source}")
    return Example(row_id, messages, images, row.get("type"))


def modality_length(example: Example) -> int:
    """Word count of all turns (+128 with an image), negative for text-only rows: the grouping key
    of the original ``group_by_modality_length``."""
    words = sum(len(_text_of(m).split()) for m in example.messages)
    return words + IMAGE_LENGTH_BONUS if example.has_image else -max(words, 1)


def read_rows(source: Any, split: str | None = None, streaming: bool = False) -> Iterable[dict]:
    """Rows from a ``.json`` list, a ``.jsonl`` file, a folder written by ``datasets.save_to_disk``, a
    `datasets` object, or any name/path ``datasets.load_dataset`` understands."""
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None and isinstance(source, datasets.DatasetDict | datasets.IterableDatasetDict):
        return source[split or "train"]
    if datasets is not None and isinstance(source, datasets.Dataset | datasets.IterableDataset):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return source  # any iterable of dicts
    path = Path(source)
    if path.suffix in (".json", ".jsonl") and not path.exists():
        # Not a dataset name either: datasets would go looking for it on the Hub.
        raise FileNotFoundError(f"data file {source} does not exist")
    if path.is_file() and path.suffix == ".json" and not streaming:
        try:
            with open(path, encoding="utf-8") as f:
                rows = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                             "fix the file, or use .jsonl for one row per line") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 "
                             "JSON") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows (use .jsonl for one row per line)")
        return rows
    if path.is_file() and path.suffix == ".jsonl" and not streaming:
        rows = []
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise ValueError(f"{path}:{n}: not a JSON object: {err}") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 "
                             "JSON lines") from None
        return rows
    if datasets is None:
        raise FileNotFoundError(f"{source}: not a .json/.jsonl file, and `datasets` is not installed")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[split or "train"]
        return loaded.to_iterable_dataset() if streaming else loaded
    if path.is_file():
        kind = "json" if path.suffix in (".json", ".jsonl") else path.suffix.lstrip(".")
        return datasets.load_dataset(kind, data_files=str(path), split=split or "train", streaming=streaming)
    return datasets.load_dataset(str(source), split=split or "train", streaming=streaming)


class _Skips:
    """Counts skipped rows by reason and warns once per row."""

    def __init__(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.reasons: Counter = Counter()

    def __call__(self, err: MalformedRowError) -> None:
        if self.on_error == "raise":
            raise err
        self.reasons[err.reason.split(":")[0].split(" (")[0]] += 1
        logger.warning("skipping malformed %s", err)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())


def _load_images(example: Example) -> list[Any]:
    try:
        return [load_image_rgb(source) for source in example.images]
    except (ValueError, OSError, TypeError) as err:
        raise MalformedRowError(example.id, f"cannot read image: {err}") from None


class LlavaDataset(Dataset):
    """Map-style LLaVA data; every row is validated when the dataset is built.

    Items are ``{"id", "messages", "images": [PIL.Image, ...], "type"}``; the collator tokenises.
    ``modality_lengths`` feeds :class:`~eagle_hf.training.sampler.ModalityLengthGroupedSampler`.
    """

    def __init__(self, rows: Iterable[dict], image_folder: str | Path | None = None, on_error: str = "raise",
                 check_files: bool = True, require_answer: bool = True):
        self.image_folder = image_folder
        self._skips = _Skips(on_error)
        self.examples: list[Example] = []
        for index, row in enumerate(rows):
            try:
                self.examples.append(parse_row(row, image_folder, index, check_files, require_answer))
            except MalformedRowError as err:
                self._skips(err)
        if self._skips.count:
            logger.warning("skipped %d malformed row(s): %s", self._skips.count, dict(self._skips.reasons))
        if not self.examples:
            raise ValueError("no usable rows in the data" + (f" ({self._skips.count} malformed)" if self._skips.count else ""))

    @property
    def skipped(self) -> int:
        return self._skips.count

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[index]
        return {"id": ex.id, "messages": ex.messages, "images": _load_images(ex), "type": ex.type}

    @property
    def modality_lengths(self) -> list[int]:
        return [modality_length(ex) for ex in self.examples]


class LlavaIterableDataset(IterableDataset):
    """Streamed LLaVA data (a ``streaming=True`` `datasets` object or any iterable of rows), checked
    row by row. DataLoader workers each take every n-th row; ranks are split by the Trainer."""

    def __init__(self, rows: Iterable[dict], image_folder: str | Path | None = None, on_error: str = "raise"):
        self.rows, self.image_folder = rows, image_folder
        self._skips = _Skips(on_error)

    @property
    def skipped(self) -> int:
        return self._skips.count

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.rows, "set_epoch"):
            self.rows.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        for index, row in enumerate(self.rows):
            if worker is not None and index % worker.num_workers != worker.id:
                continue
            try:
                ex = parse_row(row, self.image_folder, index)
                yield {"id": ex.id, "messages": ex.messages, "images": _load_images(ex), "type": ex.type}
            except MalformedRowError as err:
                self._skips(err)


def build_dataset(data: Any, image_folder: str | Path | None = None, on_error: str = "raise",
                  streaming: bool = False, split: str | None = None) -> LlavaDataset | LlavaIterableDataset:
    rows = read_rows(data, split=split, streaming=streaming)
    if streaming or isinstance(rows, IterableDataset) or not hasattr(rows, "__len__"):
        return LlavaIterableDataset(rows, image_folder, on_error)
    return LlavaDataset(rows, image_folder, on_error)


class EagleDataCollator:
    """Renders each conversation with the processor's template, tokenises it like the original
    ``tokenizer_image_token`` and keeps labels only on assistant answers (with their closing
    separator). Sequences longer than ``max_length`` lose text from the end; a row whose image
    span would be cut is an error naming the row (or is dropped, with ``on_error="skip"``).
    Images of any size come out of the image processor at the model's input size, in text order.
    """

    def __init__(self, processor, template: str | None = None, max_length: int | None = None,
                 on_error: str = "raise", padding_side: str = "right", pad_to_multiple_of: int | None = None):
        self.processor = processor
        self.template = template or getattr(processor, "template_name", None)
        if self.template is None:
            raise ValueError("the processor names no conversation template; pass template=")
        self.max_length = max_length
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self._skips = _Skips(on_error)

    @property
    def skipped(self) -> int:
        return self._skips.count

    def encode(self, item: dict) -> dict:
        """One row -> ``input_ids``, ``labels`` (lists) and ``pixel_values`` (tensor or None)."""
        text, spans = render_with_spans(self.template, item["messages"], image_token=self.processor.image_token)
        kwargs = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        try:
            enc = self.processor.build_labels(text, spans, images=item["images"] or None, return_tensors=None, **kwargs)
        except ValueError as err:
            raise MalformedRowError(item["id"], str(err)) from None
        ids, labels = enc["input_ids"][0], enc["labels"][0]
        if all(label == IGNORE_INDEX for label in labels):
            raise MalformedRowError(item["id"], "no answer token left to learn from after truncation to "
                                                f"{self.max_length} tokens")
        pixels = None
        if item["images"]:
            pixels = torch.stack([torch.as_tensor(p) for p in enc["pixel_values"]])
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels}

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        encoded = []
        for item in items:
            try:
                encoded.append(self.encode(item))
            except MalformedRowError as err:
                self._skips(err)
        if not encoded:
            raise ValueError(f"every row of a batch was malformed: {[item['id'] for item in items]}")
        width = max(len(e["input_ids"]) for e in encoded)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.processor.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before training")
        batch = {
            "input_ids": torch.full((len(encoded), width), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(encoded), width), dtype=torch.long),
            "labels": torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long),
        }
        for row, e in enumerate(encoded):
            n = len(e["input_ids"])
            cols = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            batch["input_ids"][row, cols] = torch.tensor(e["input_ids"])
            batch["attention_mask"][row, cols] = 1
            batch["labels"][row, cols] = torch.tensor(e["labels"])
        pixels = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch

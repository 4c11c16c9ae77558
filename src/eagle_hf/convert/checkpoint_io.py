"""Reading and writing checkpoints one tensor at a time.

Full-size EAGLE checkpoints are 9 GB (X5 float32) to 70 GB (34B bfloat16): nothing here ever
holds more than one tensor of a shard in memory. Sources are memory-mapped (safetensors, and
zip-format ``.bin`` files through ``torch.load(mmap=True)``); outputs are written with a streaming
safetensors writer that lays out the header from the planned shapes first and then appends each
tensor's bytes as it arrives.
"""

import json
import math
import os
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..modeling.safetensors_header import CheckpointError, read_safetensors_header

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

# safetensors dtype codes (https://github.com/huggingface/safetensors, format spec).
_DTYPE_TO_ST = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_TO_DTYPE = {v: k for k, v in _DTYPE_TO_ST.items()}

def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '2GiB' / 1234 -> bytes (decimal units, as transformers' max_shard_size)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "TB": 10**12, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"cannot read size {size!r} (use e.g. 5GB, 500MB, 2GiB)") from None


def nbytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------------------
# Validation


def checkpoint_files(folder: str | os.PathLike) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a checkpoint folder (index first; ``*_old`` leftovers are ignored
    because only the index says which files are current) and the index's weight map."""
    folder = Path(folder)
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise CheckpointError(f"{index}: not a valid checkpoint index ({err})") from None
            names = list(dict.fromkeys(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shard files that are not in {folder}: {', '.join(missing)}")
            return [folder / n for n in names], weight_map
    for single in (SAFE_SINGLE, BIN_SINGLE):
        if (folder / single).is_file():
            return [folder / single], None
    raise FileNotFoundError(
        f"{folder} holds no weights: expected {SAFE_INDEX}, {SAFE_SINGLE}, {BIN_INDEX} or {BIN_SINGLE}"
    )


def validate_checkpoint_folder(folder: str | os.PathLike) -> None:
    """Cheap integrity check of every safetensors file of a folder (headers only)."""
    files, _ = checkpoint_files(folder)
    for path in files:
        if path.suffix == ".safetensors":
            read_safetensors_header(path)


# ----------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    offset: int | None = None  # absolute byte offset of the data in a safetensors file


class SourceCheckpoint:
    """Random access to the tensors of a (possibly sharded) safetensors or ``.bin`` checkpoint,
    one tensor at a time."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.files, _ = checkpoint_files(self.folder)
        self._infos: dict[str, TensorInfo] = {}
        self._open_bin: tuple[Path, dict] | None = None
        for path in self.files:
            if path.suffix == ".safetensors":
                header = read_safetensors_header(path)
                with open(path, "rb") as f:
                    data_start = 8 + struct.unpack("<Q", f.read(8))[0]
                for name, entry in header.items():
                    if name == "__metadata__":
                        continue
                    dtype = _ST_TO_DTYPE.get(entry["dtype"])
                    if dtype is None:
                        raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
                    begin, end = (int(o) for o in entry["data_offsets"])
                    shape = tuple(int(s) for s in entry["shape"])
                    if end - begin != nbytes(shape, dtype):
                        raise CheckpointError(f"{path}: tensor {name} announces {end - begin} bytes for shape "
                                              f"{list(shape)} {entry['dtype']}; the file is corrupt")
                    self._add(TensorInfo(name, shape, dtype, path, data_start + begin))
            else:
                for name, tensor in self._load_bin(path).items():
                    self._add(TensorInfo(name, tuple(tensor.shape), tensor.dtype, path))

    def _add(self, info: TensorInfo) -> None:
        if info.name in self._infos:
            first = self._infos[info.name].file
            raise CheckpointError(f"tensor {info.name} is stored twice: in {first} and {info.file}")
        self._infos[info.name] = info

    def _load_bin(self, path: Path) -> dict:
        if self._open_bin is not None and self._open_bin[0] == path:
            return self._open_bin[1]
        self._open_bin = None  # drop the previous file's mapping first
        try:
            if zipfile.is_zipfile(path):
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            else:
                warnings.warn(f"{path} uses torch's legacy (pre-1.6) format, which cannot be memory-mapped; "
                              "it is read into memory whole", stacklevel=3)
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises a variety of types for damaged archives
            raise CheckpointError(f"{path}: cannot read this PyTorch checkpoint ({type(err).__name__}: {err})") from err
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a state dict of tensors")
        self._open_bin = (path, state)
        return state

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def get(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        if info.offset is None:
            return self._load_bin(info.file)[name]
        # A plain read into a fresh tensor: unlike a memory map, nothing of the file stays
        # resident after the tensor is written out and dropped.
        tensor = torch.empty(info.shape, dtype=info.dtype)
        buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        with open(info.file, "rb") as f:
            f.seek(info.offset)
            if f.readinto(buffer) != len(buffer):
                raise CheckpointError(f"{info.file}: truncated while reading tensor {name}")
        return tensor


# ----------------------------------------------------------------------------------------------
# Writing


def write_safetensors(path: str | os.PathLike, specs: list[tuple[str, tuple[int, ...], torch.dtype]],
                      produce: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None,
                      on_tensor: Callable[[str, int], None] | None = None) -> None:
    """Write a safetensors file whose tensors are made one at a time by ``produce(name)``.

    ``specs`` fixes names, shapes and dtypes up front so the header (with every data offset)
    can be written before any tensor exists; each produced tensor must match its spec.
    """
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        size = nbytes(shape, dtype)
        header[name] = {"dtype": _DTYPE_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in specs:
            tensor = produce(name)
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"{name}: produced {tuple(tensor.shape)} {tensor.dtype}, "
                                 f"planned {tuple(shape)} {dtype}")
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))
            if on_tensor is not None:
                on_tensor(name, data.numel())
            del tensor, data


def plan_shards(specs: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int | None = None,
                num_shards: int | None = None) -> list[list[tuple[str, tuple[int, ...], torch.dtype]]]:
    """Split tensors, in order, into shards of at most ``max_shard_bytes`` (a larger tensor gets
    its own shard), or into ``num_shards`` shards of about equal size (fewer when single tensors
    outweigh a shard)."""
    sizes = [nbytes(shape, dtype) for _, shape, dtype in specs]
    if num_shards is not None:
        total = max(sum(sizes), 1)
        groups: dict[int, list] = {}
        start = 0
        for spec, size in zip(specs, sizes):
            # A tensor goes to the shard its middle byte falls in.
            groups.setdefault(min(num_shards - 1, (2 * start + size) * num_shards // (2 * total)), []).append(spec)
            start += size
        return [groups[k] for k in sorted(groups)] or [[]]
    shards: list[list] = [[]]
    current = 0
    for spec, size in zip(specs, sizes):
        if shards[-1] and max_shard_bytes is not None and current + size > max_shard_bytes:
            shards.append([])
            current = 0
        shards[-1].append(spec)
        current += size
    return shards


def shard_names(count: int, fmt: str = "safetensors") -> list[str]:
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if count == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i + 1:05d}-of-{count:05d}.{ext}" for i in range(count)]


def write_index(folder: str | os.PathLike, shards: list[list], names: list[str], fmt: str = "safetensors") -> None:
    total = sum(nbytes(shape, dtype) for shard in shards for _, shape, dtype in shard)
    weight_map = {name: file for shard, file in zip(shards, names) for name, _, _ in shard}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    target = Path(folder) / (SAFE_INDEX if fmt == "safetensors" else BIN_INDEX)
    target.write_text(json.dumps(index, indent=2) + "\n")

"""The one check of a safetensors file's header against its size.

safetensors' own error for a file cut short (a download or copy interrupted) does not name the
file; loading (`EaglePreTrainedModel.from_pretrained`, original checkpoints), conversion and
training's resume all ask this module instead. It imports only the standard library, so it is
copied with the model code for ``trust_remote_code`` folders.
"""

import glob
import json
import os
import struct
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, inconsistent index)."""


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """Parse a safetensors header and check that the file really holds all the data it
    announces. A download or copy cut short otherwise surfaces much later as an error that
    does not name the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes; truncated?)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: truncated safetensors file (header announces {header_len} bytes, file has {size})"
            )
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckpointError(f"{path}: corrupt safetensors header (a tensor entry has no data_offsets)") from None
    expected = 8 + header_len + end
    if size < expected:
        raise CheckpointError(
            f"{path}: truncated safetensors file: {size} bytes on disk, {expected} needed for its "
            f"{len(header) - ('__metadata__' in header)} tensors (re-download or re-copy it)"
        )
    return header


def check_safetensors_files(folder: str | os.PathLike | None, subfolder: str | None = None) -> None:
    """Raise `CheckpointError` for the first ``*.safetensors`` file of a local folder that is cut
    short or corrupt; a Hub id or a missing folder is left to transformers."""
    if folder is None:
        return
    where = os.path.join(str(folder), subfolder or "")
    if not os.path.isdir(where):
        return
    for path in sorted(glob.glob(os.path.join(where, "*.safetensors"))):
        read_safetensors_header(path)

"""``group_by_modality_length``: the original's batch order for mixed image / text-only data.

Image rows and text-only rows never share a batch (except in one final mixed batch), and the rows
of each batch have similar lengths, with the longest batches spread over the ranks evenly. The
order is a pure function of (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one.
"""

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _balanced_chunks(indices: list[int], lengths: Sequence[int], n_chunks: int) -> list[list[int]]:
    """Deal `indices` (longest first) into `n_chunks` equal-size chunks, each next index going to
    the chunk with the smallest total length; ragged inputs are dealt round-robin instead."""
    if len(indices) % n_chunks:
        return [indices[k::n_chunks] for k in range(n_chunks)]
    per_chunk = len(indices) // n_chunks
    chunks: list[list[int]] = [[] for _ in range(n_chunks)]
    totals = [0.0] * n_chunks
    for index in indices:
        k = min(range(n_chunks), key=totals.__getitem__)
        chunks[k].append(index)
        totals[k] = float("inf") if len(chunks[k]) == per_chunk else totals[k] + lengths[index]
    return chunks


def length_grouped_order(lengths: Sequence[int], batch_size: int, world_size: int,
                         generator: torch.Generator) -> list[int]:
    """Shuffle, cut into megabatches of ``world_size * batch_size``, sort each by length (longest
    first) and balance it over the ranks."""
    mega = world_size * batch_size
    order = torch.randperm(len(lengths), generator=generator).tolist()
    out: list[int] = []
    for start in range(0, len(order), mega):
        block = sorted(order[start:start + mega], key=lambda i: lengths[i], reverse=True)
        for chunk in _balanced_chunks(block, lengths, world_size):
            out.extend(chunk)
    return out


def modality_grouped_order(lengths: Sequence[int], batch_size: int, world_size: int,
                           generator: torch.Generator) -> list[int]:
    """``lengths``: positive for image rows, negative for text-only rows (never zero)."""
    if any(n == 0 for n in lengths):
        raise ValueError("modality lengths must be non-zero: positive for image rows, negative for text-only rows")
    if all(n > 0 for n in lengths) or all(n < 0 for n in lengths):
        return length_grouped_order([abs(n) for n in lengths], batch_size, world_size, generator)
    mega = world_size * batch_size
    megabatches, leftovers = [], []
    for sign in (1, -1):
        members = [i for i, n in enumerate(lengths) if n * sign > 0]
        local = length_grouped_order([abs(lengths[i]) for i in members], batch_size, world_size, generator)
        ordered = [members[i] for i in local]
        blocks = [ordered[s:s + mega] for s in range(0, len(ordered), mega)]
        megabatches += blocks[:-1]
        leftovers += blocks[-1]
    order = [megabatches[k] for k in torch.randperm(len(megabatches), generator=generator).tolist()]
    if leftovers:
        order.append(sorted(leftovers))
    return [i for block in order for i in block]


class ModalityLengthGroupedSampler(Sampler[int]):
    """The full (all-rank) index order; the Trainer's data loader shards the batches over ranks.

    ``batch_size`` is the per-device batch and ``world_size`` should include gradient accumulation,
    as the original passed ``world_size * gradient_accumulation_steps``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0,
                 group_by_modality: bool = True):
        self.lengths, self.batch_size, self.world_size = list(lengths), batch_size, world_size
        self.seed, self.epoch, self.group_by_modality = seed, 0, group_by_modality

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order_fn = modality_grouped_order if self.group_by_modality else length_grouped_order
        lengths = self.lengths if self.group_by_modality else [abs(n) for n in self.lengths]
        return iter(order_fn(lengths, self.batch_size, self.world_size, generator))

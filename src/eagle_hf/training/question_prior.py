"""Training against the question-only answer prior: a product of experts (Clark et al. 2019, "Don't
take the easy way out", the bias product with a count-based bias model).

Where some attribute combinations never appear in training (issue 15's held-out colour-shape
pairs), the answers' distribution given the question text says that they never happen: no red
object is ever a star, so "What shape is the red object?" is never answered "star". A model trained
by plain cross-entropy learns that prior from the text alone and no image evidence overrides it
(README, "Training": 0 of 91 such questions answered right). Here the model's next-token logits at
the first token of each answer are added to the log of that prior before the cross-entropy, so the
prior already explains what the question alone predicts and the gradient only asks the model for
what the image adds. The model is then used alone (generation, ``eagle-hf eval``): nothing of the
prior is saved with it.

The prior is counted from the training rows themselves, tokenised by the training collator: for
each answer, the key is its question turn (the tokens since the previous answer ended, image and
padding tokens left out) and the count is of the answer's first token, smoothed by adding
``alpha`` to every vocabulary entry. Only first tokens get it: the rest of an answer (its closing
marker, the rest of a word) is all but determined by the question and its first token, so the
prior would explain it away and the model alone would never learn to end an answer.
"""

from collections import Counter, defaultdict
from collections.abc import Sequence

import torch

from ..processing import IGNORE_INDEX


def answer_keys(input_ids: Sequence[int], labels: Sequence[int], skip_ids: frozenset[int],
                attention_mask: Sequence[int] | None = None) -> list[tuple[int, tuple[int, ...]]]:
    """``(position, key)`` of each answer of one row: ``position`` is that of the token just
    before the answer's first labelled token (the logits there predict it), ``key`` the ids of the
    question turn: from the end of the previous answer (or the row's start) up to the answer, with
    ``skip_ids`` (image tokens) and masked positions (padding) left out."""
    out, turn_start = [], 0
    for pos in range(1, len(labels)):
        if labels[pos] != IGNORE_INDEX and labels[pos - 1] == IGNORE_INDEX:
            key = tuple(t for k, t in enumerate(input_ids[turn_start:pos], turn_start)
                        if t not in skip_ids and (attention_mask is None or attention_mask[k]))
            out.append((pos - 1, key))
        elif labels[pos] == IGNORE_INDEX and labels[pos - 1] != IGNORE_INDEX:
            turn_start = pos
    return out


def check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"the question prior's smoothing alpha (--question-prior) must be > 0: with 0 an answer "
                         f"never seen after a question would get log 0 = -inf; got {alpha}")


class QuestionPrior:
    """The counted prior ``log p(first answer token | question turn)`` of a training set."""

    def __init__(self, counts: dict[tuple[int, ...], Counter], vocab_size: int, alpha: float,
                 skip_ids: frozenset[int]):
        check_alpha(alpha)
        self.vocab_size, self.alpha, self.skip_ids = vocab_size, alpha, skip_ids
        # Sparse: real data has about as many distinct question turns as rows, so one dense row of
        # the vocabulary per turn would not fit in memory. (A turn seen once raises its answer over
        # the rest of the vocabulary by only log(1 + 1/alpha): the prior matters for turns seen often.)
        self.counts = {key: (torch.tensor(list(c)), torch.tensor(list(c.values()), dtype=torch.float32))
                       for key, c in counts.items()}

    def __len__(self) -> int:
        """The number of distinct question turns counted."""
        return len(self.counts)

    def log_prob_row(self, key: tuple[int, ...]) -> torch.Tensor:
        """``log p(first answer token | key)`` over the vocabulary (uniform for a turn never counted)."""
        tokens, n = self.counts.get(key, (torch.zeros(0, dtype=torch.long), torch.zeros(0)))
        total = n.sum() + self.alpha * self.vocab_size
        row = torch.full((self.vocab_size,), float(self.alpha)).div_(total).log_()
        row[tokens] = ((n + self.alpha) / total).log()
        return row

    @classmethod
    def from_dataset(cls, dataset, collator, vocab_size: int, alpha: float = 1.0) -> "QuestionPrior":
        """Count over every row of a map-style ``dataset`` (a `LlavaDataset`), tokenised by ``collator``
        (an `EagleDataCollator`) exactly as training will see it."""
        check_alpha(alpha)
        if not hasattr(dataset, "__len__"):
            raise ValueError("the question prior is counted over the whole training set before training: it needs "
                             "map-style data, not a stream (drop --streaming or the question prior)")
        skip = frozenset({collator.processor.image_token_id})
        counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        for index in range(len(dataset)):
            try:
                encoded = collator.encode(dataset[index])
            except ValueError:
                continue  # a malformed row: the collator skips (or refuses) it in training the same way
            ids, labels = encoded["input_ids"], encoded["labels"]
            for pos, key in answer_keys(ids, labels, skip):
                counts[key][labels[pos + 1]] += 1
        if not counts:
            raise ValueError("no answer to count a question prior from in the training data")
        return cls(counts, vocab_size, alpha, skip)

    def bias_rows(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``(batch index, position, log prior rows)`` for every answer of a collated batch."""
        rows, cols, values = [], [], []
        ids, labs = input_ids.tolist(), labels.tolist()
        masks = attention_mask.tolist() if attention_mask is not None else [None] * len(ids)
        for b, (row_ids, row_labels, row_mask) in enumerate(zip(ids, labs, masks)):
            for pos, key in answer_keys(row_ids, row_labels, self.skip_ids, row_mask):
                rows.append(b)
                cols.append(pos)
                values.append(self.log_prob_row(key))
        if not values:
            return None
        return torch.tensor(rows), torch.tensor(cols), torch.stack(values)

    def add_to(self, logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` [B, T, V] with the log prior added where each answer's first token is predicted
        (out of place: the model's logits keep their gradient)."""
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(f"the question prior was counted over a vocabulary of {self.vocab_size} tokens, the "
                             f"model's logits have {logits.shape[-1]}")
        found = self.bias_rows(input_ids, labels, attention_mask)
        if found is None:
            return logits
        rows, cols, values = found
        device = logits.device
        return logits.index_put((rows.to(device), cols.to(device)), values.to(device=device, dtype=logits.dtype),
                                accumulate=True)

"""Linear probes of the image tokens: how well an object's attributes can be read off the fused
vision features (the projector's input) of the token under the object's centre.

The quickstart measures this after each training stage, on rows of the synthetic set (which list
their scene's ``objects``), to show what a stage changed in the features rather than only in the
answers: a logistic regression is fitted on training images and scored on held-out ones.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..processing import load_image_rgb


def _rows(data) -> list[dict]:
    rows = json.loads(Path(data).read_text()) if isinstance(data, (str, Path)) else list(data)
    unique = {}
    for row in rows:  # test sets ask several questions per image: probe each image once
        unique.setdefault(row["image"], row)
    return list(unique.values())


def lone_objects(objects: Sequence[dict], grid: int) -> list[tuple[dict, int]]:
    """``(object, token index)`` for each object of a row's ``objects`` alone in its cell of the
    ``grid`` x ``grid`` token grid (two objects sharing a token would make the label ambiguous)."""
    cells = [min(grid - 1, int(o["y"] * grid)) * grid + min(grid - 1, int(o["x"] * grid)) for o in objects]
    return [(o, c) for o, c in zip(objects, cells) if cells.count(c) == 1]


@torch.no_grad()
def object_features(model, processor, rows: Sequence[dict], image_folder, batch_size: int = 64,
                    attributes: Sequence[str] = ("shape", "color")) -> tuple[torch.Tensor, dict[str, list[str]]]:
    """``(features [objects, channels], {attribute: labels})`` for every object alone in its grid
    cell (two objects sharing a token would make the label ambiguous)."""
    grid = model.config.vision_config.grid_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, labels = [], {a: [] for a in attributes}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = [load_image_rgb(Path(image_folder) / r["image"]) for r in chunk]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        fused = model.model.get_image_features(pixels.to(device, model.dtype)).last_hidden_state.float().cpu()
        for row, tokens in zip(chunk, fused):
            for obj, cell in lone_objects(row["objects"], grid):
                feats.append(tokens[cell])
                for a in attributes:
                    labels[a].append(obj[a])
    model.train(was_training)
    return torch.stack(feats), labels


def linear_probe_accuracy(train_x: torch.Tensor, train_y: Sequence[str], test_x: torch.Tensor,
                          test_y: Sequence[str], steps: int = 300, seed: int = 0) -> float:
    """Held-out accuracy of a multinomial logistic regression (standardised features, L-BFGS,
    a small L2 penalty) fitted on the training pairs."""
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, tx = (train_x - mean) / std, (test_x - mean) / std
    y = torch.tensor([index[c] for c in train_y])
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(x.shape[1], len(classes), generator=g) * 0.01).requires_grad_()
    bias = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        predicted = (tx @ weight + bias).argmax(1).tolist()
    return sum(classes[p] == t for p, t in zip(predicted, test_y)) / len(test_y)


def probe(model, processor, train_data, test_data, image_folder, attributes: Sequence[str] = ("shape", "color"),
          max_train_images: int = 2000) -> dict[str, float]:
    """Linear-probe accuracy of each attribute from the image token under each object: fitted on
    (up to ``max_train_images``) training images, scored on the test images."""
    train_x, train_y = object_features(model, processor, _rows(train_data)[:max_train_images], image_folder,
                                       attributes=attributes)
    test_x, test_y = object_features(model, processor, _rows(test_data), image_folder, attributes=attributes)
    return {a: linear_probe_accuracy(train_x, train_y[a], test_x, test_y[a]) for a in attributes}

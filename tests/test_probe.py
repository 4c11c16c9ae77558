"""eagle_hf.training.probe: the linear probe the quickstart uses to show what a stage changed."""

import json

import torch
from PIL import Image

from eagle_hf.training.data import build_dataset
from eagle_hf.training.probe import linear_probe_accuracy, object_features
from eagle_hf.training.synthetic import make_synthetic_vqa
from eagle_hf.training.tiny import build_tiny


def _clusters(n, classes, dim, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(classes), dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = [classes[i % len(classes)] for i in range(n)]
    x = torch.stack([centres[classes.index(c)] for c in labels]) + spread * torch.randn(n, dim, generator=g)
    return x, labels


def test_probe_reads_separable_attributes_and_not_random_labels():
    classes = ["circle", "square", "triangle", "star"]
    x, y = _clusters(400, classes, 16, 0.5, seed=0)
    tx, ty = _clusters(200, classes, 16, 0.5, seed=1)
    assert linear_probe_accuracy(x, y, tx, ty) > 0.97
    shuffled = [classes[i] for i in torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(3))]
    unrelated = [classes[i] for i in torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(4))]
    assert linear_probe_accuracy(x, shuffled, tx, unrelated) < 0.4


def test_object_features_are_the_fused_token_under_each_object(tmp_path):
    paths = make_synthetic_vqa(tmp_path, n_train=6, n_test=1, seed=2, generator="shapes")
    rows = json.loads(paths["train"].read_text())
    model, processor = build_tiny(build_dataset(str(paths["train"]), str(paths["image_folder"])).examples, seed=0)
    feats, labels = object_features(model, processor, rows, paths["image_folder"], batch_size=4)
    grid = model.config.vision_config.grid_size
    expected, expected_shapes = [], []
    for row in rows:
        pixels = processor.image_processor(Image.open(paths["image_folder"] / row["image"]).convert("RGB"),
                                           return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            fused = model.model.get_image_features(pixels).last_hidden_state[0]
        cells = [int(o["y"] * grid) * grid + int(o["x"] * grid) for o in row["objects"]]
        for o, c in zip(row["objects"], cells):
            if cells.count(c) == 1:
                expected.append(fused[c])
                expected_shapes.append(o["shape"])
    assert feats.shape == (len(expected), model.config.vision_config.hidden_size)
    torch.testing.assert_close(feats, torch.stack(expected), rtol=1e-5, atol=1e-5)
    assert labels["shape"] == expected_shapes

"""The synthetic compositional VQA generators (eagle_hf.training.synthetic), checked against the
images they draw and the rules of the task, for every registered generator."""

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from eagle_hf.training.synthetic import (
    GENERATORS,
    NUMBERS,
    QUESTION_TYPES,
    WORDINGS,
    get_generator,
    make_synthetic_vqa,
)

N_TRAIN, N_TEST = 80, 60


@pytest.fixture(scope="module", params=sorted(GENERATORS))
def data(request, tmp_path_factory):
    paths = make_synthetic_vqa(tmp_path_factory.mktemp(request.param), n_train=N_TRAIN, n_test=N_TEST, seed=5,
                               generator=request.param)
    return (GENERATORS[request.param], paths, json.loads(paths["train"].read_text()),
            json.loads(paths["test"].read_text()))


def _pairs(row):
    return {(o["color"], o["shape"]) for o in row["objects"]}


def _qa(row):
    turns = row["conversations"]
    return [(q["value"].replace("<image>\n", ""), a["value"]) for q, a in zip(turns[::2], turns[1::2])]


def test_held_out_pairs_never_appear_in_training_and_are_tested(data):
    gen, _, train, test = data
    held = set(gen.held_out)
    assert held and held < set(gen.pairs)
    assert not any(_pairs(r) & held for r in train)
    tagged = {r["image"]: r["combo"] for r in test}
    with_held = {r["image"] for r in test if _pairs(r) & held}
    assert with_held and {i for i, c in tagged.items() if c == "held_out"} == with_held
    # every colour and every shape of a held-out pair is still seen in training, with other partners
    seen = set().union(*(_pairs(r) for r in train))
    assert {c for c, _ in held} <= {c for c, _ in seen} and {s for _, s in held} <= {s for _, s in seen}


def test_answers_follow_from_the_scene(data):
    """Each question's answer recomputed from the scene's object list, by type, with the reference
    parsed out of the question text."""
    gen, _, train, test = data
    for row in train + test:
        objs = row["objects"]
        assert gen.objects[0] <= len(objs) <= gen.objects[1]
        assert len(_pairs(row)) == len(objs), "colour-shape pairs are distinct within a scene"
        for q, a in _qa(row):
            colors = [c for c in gen.colors if re.search(rf"\b{c}\b", q)]
            shapes = [s for s in gen.shapes if re.search(rf"\b{s}\b", q)]
            if colors and shapes:          # position: the object with both attributes
                qtype, (o,) = "position", [o for o in objs if o["color"] == colors[0] and o["shape"] == shapes[0]]
                assert a == ("left" if o["x"] < 0.5 else "right")
            elif colors:                   # shape: the only object of that colour
                qtype, (o,) = "shape", [o for o in objs if o["color"] == colors[0]]
                assert a == o["shape"]
            elif shapes:                   # colour: the only object of that shape
                qtype, (o,) = "color", [o for o in objs if o["shape"] == shapes[0]]
                assert a == o["color"]
            else:
                qtype = "count"
                assert a == NUMBERS[len(objs)]
            words = set(re.findall(r"[a-z]+", q.lower()))
            assert a not in words or gen.answers(qtype) <= words, f"the question gives its answer away: {q!r} -> {a!r}"


def test_scenes_have_distractors_and_no_ambiguous_side(data):
    gen, _, train, _ = data
    objs = [o for r in train for o in r["objects"]]
    assert min(abs(o["x"] - 0.5) - o["size"] / 2 for o in objs) > 0, "an object touches the midline"
    shared = sum(any(o is not p and (o["color"] == p["color"] or o["shape"] == p["shape"]) for p in r["objects"])
                 for r in train for o in r["objects"])
    assert shared / len(objs) > 0.3, "most scenes should hold objects sharing an attribute"
    sizes = [o["size"] for o in objs]
    assert gen.sizes[0] <= min(sizes) < max(sizes) <= gen.sizes[1]


def test_pixels_at_object_centres_have_the_object_colour(data):
    """The drawing is what the metadata says: a 3x3 window at each (non-ring) object's centre is
    near its palette colour (within the colour jitter and noise), and nearer to it than to any
    other colour of the palette."""
    gen, paths, train, _ = data
    for row in train[:30]:
        img = np.asarray(Image.open(paths["image_folder"] / row["image"]).convert("RGB"), dtype=np.float32)
        h, w, _ = img.shape
        for o in row["objects"]:
            if o["shape"] == "ring":
                continue
            y, x = int(o["y"] * h), int(o["x"] * w)
            mean = img[max(0, y - 1):y + 2, max(0, x - 1):x + 2].reshape(-1, 3).mean(0)
            dist = {c: np.abs(mean - np.array(rgb)).max() for c, rgb in gen.colors.items()}
            assert min(dist, key=dist.get) == o["color"] and dist[o["color"]] < 40, (row["image"], o, dist)


def test_test_rows_ask_every_type_with_varied_wording(data):
    gen, _, _, test = data
    assert {r["type"] for r in test} == set(QUESTION_TYPES)
    for qtype in QUESTION_TYPES:
        answers = Counter(r["conversations"][1]["value"] for r in test if r["type"] == qtype)
        assert set(answers) <= gen.answers(qtype) and len(answers) >= 2
        templates = {re.sub("|".join(list(gen.colors) + list(gen.shapes)), "X", r["conversations"][0]["value"])
                     for r in test if r["type"] == qtype}
        assert len(templates) >= 2 and len(WORDINGS[qtype]) >= 2


def test_generation_is_seeded(tmp_path):
    a = make_synthetic_vqa(tmp_path / "a", n_train=3, n_test=2, seed=7, generator="glyphs")
    b = make_synthetic_vqa(tmp_path / "b", n_train=3, n_test=2, seed=7, generator="glyphs")
    assert a["train"].read_text() == b["train"].read_text() and a["test"].read_text() == b["test"].read_text()
    for name in ("train_000000.png", "test_000001.png"):
        assert (a["image_folder"] / name).read_bytes() == (b["image_folder"] / name).read_bytes()


def test_unknown_generator_is_named():
    with pytest.raises(ValueError, match=r"unknown synthetic generator 'clevr'; choose one of .*shapes"):
        get_generator("clevr")

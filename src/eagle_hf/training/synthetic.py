"""Synthetic compositional visual question answering: scenes of several coloured shapes.

A scene holds one to four (or two to five) objects, each a (colour, shape) pair, on a noisy
background; colours and shapes repeat across objects, so most objects have a *distractor* that
shares one attribute with them. Every question binds attributes, and is asked only where its
reference is unique in the scene:

- ``shape``: "What shape is the red object?" (colour -> shape)
- ``color``: "What color is the triangle?" (shape -> colour)
- ``position``: "Is the blue square on the left or the right?" (colour + shape -> side)
- ``count``: "How many objects are there?"

Some colour-shape pairs (``Generator.held_out``) never appear in training images; test questions
about images holding one are tagged ``"combo": "held_out"``, so a model that memorised pairs
instead of recognising colour and shape separately shows it there. Each type has several
wordings, none depending on the answer, so a model shown a blank image can do no better than the
answer prior (and a test can see if it does).

Two generators, built differently, so a training recipe can be checked not to be tuned to one:
``shapes`` (filled circle/square/triangle/star, five primary colours, free placement, flat
background) and ``glyphs`` (diamond/hexagon/cross/ring, five other colours, jittered-grid
placement, gradient background, smaller objects, more of them). Rows are LLaVA-format; a training
row asks up to six of the valid questions about its image as a multi-turn conversation (one vision forward
supervises many answers), a test row asks one question and carries ``type`` and ``combo``; every
row lists its scene's ``objects`` (colour, shape, centre and size as fractions of the image).
"""

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

QUESTION_TYPES = ("color", "shape", "position", "count")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")

# Several wordings per type; the placeholders name the reference, never the answer.
WORDINGS = {
    "shape": ("What shape is the {color} object?", "Which shape is {color}?",
              "What is the shape of the {color} one?", "Name the shape of the {color} object."),
    "color": ("What color is the {shape}?", "Which color does the {shape} have?",
              "What is the color of the {shape}?", "Name the color of the {shape}."),
    "position": ("Is the {color} {shape} on the left or the right?", "On which side is the {color} {shape}, left or right?",
                 "Where is the {color} {shape}: left or right?", "Is the {color} {shape} left or right?"),
    "count": ("How many objects are there?", "How many shapes can you see?", "Count the objects.",
              "What is the number of objects?"),
}

# Drawn at this multiple of the final size and downsampled, so edges are antialiased the same
# way at every size (hard aliased edges would make some shapes easier than real data).
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Generator:
    """How scenes are built: the attribute sets, object sizes (diameter as a fraction of the image
    side), object count, placement (``free`` or ``grid``: one object per jittered cell of a
    ``columns`` x ``rows`` grid), background (``flat`` or ``gradient``) and pixel noise (std in
    0..255 levels), and the colour-shape pairs kept out of training."""

    name: str
    colors: dict
    shapes: tuple
    sizes: tuple
    objects: tuple
    layout: str
    background: str
    noise: float
    held_out: tuple
    columns: int = 4
    rows: int = 3

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(c, s) for c in self.colors for s in self.shapes]

    def answers(self, qtype: str) -> set[str]:
        return {"color": set(self.colors), "shape": set(self.shapes), "position": {"left", "right"},
                "count": {NUMBERS[n] for n in range(self.objects[0], self.objects[1] + 1)}}[qtype]


GENERATORS = {
    "shapes": Generator(
        name="shapes",
        colors={"red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 225), "yellow": (230, 200, 30),
                "purple": (145, 60, 200)},
        shapes=("circle", "square", "triangle", "star"), sizes=(0.2, 0.32), objects=(1, 4), layout="free",
        background="flat", noise=8.0,
        held_out=(("red", "star"), ("green", "triangle"), ("blue", "square"), ("yellow", "circle"))),
    "glyphs": Generator(
        name="glyphs",
        colors={"orange": (240, 130, 20), "cyan": (30, 185, 205), "magenta": (210, 40, 160), "lime": (135, 215, 40),
                "brown": (120, 70, 30)},
        shapes=("diamond", "hexagon", "cross", "ring"), sizes=(0.17, 0.24), objects=(2, 5), layout="grid",
        background="gradient", noise=12.0,
        held_out=(("orange", "ring"), ("cyan", "cross"), ("magenta", "hexagon"), ("lime", "diamond"))),
}


# The compositional generators, and every name make_synthetic_vqa accepts.
GENERATOR_NAMES = ("grouped", *GENERATORS)


def get_generator(name: str) -> Generator:
    if name == "grouped":
        return GROUPED
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic generator {name!r}; choose one of {', '.join(GENERATOR_NAMES)}")
    return GENERATORS[name]


@dataclass
class Shape:
    shape: str
    color: str
    cx: float
    cy: float
    size: float
    angle: float = 0.0

    @property
    def side(self) -> str:
        return "left" if self.cx < 0.5 else "right"


def _polygon(cx, cy, r, n, angle, inner=None):
    """A regular ``n``-gon (a star with ``inner`` radius) of outer radius ``r``; vertex 0 up."""
    points, k = [], 2 * n if inner else n
    for i in range(k):
        rad = r if not inner or i % 2 == 0 else inner
        a = angle - math.pi / 2 + 2 * math.pi * i / k
        points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, big: int, rgb, background) -> None:
    cx, cy, r, a = s.cx * big, s.cy * big, s.size * big / 2, s.angle
    # Radii are set so the shapes cover similar areas: size is never a cue for shape.
    if s.shape == "circle":
        draw.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=rgb)
    elif s.shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.12, 4, a + math.pi / 4), fill=rgb)
    elif s.shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.15, 3, a), fill=rgb)
    elif s.shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.2, 5, a, inner=r * 0.5), fill=rgb)
    elif s.shape == "diamond":  # a rhombus, taller than wide: never a rotated square
        w, h = r * 0.7, r * 1.1
        draw.polygon([(cx, cy - h), (cx + w, cy), (cx, cy + h), (cx - w, cy)], fill=rgb)
    elif s.shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, a + math.pi / 6), fill=rgb)
    elif s.shape == "cross":
        w = r * 0.36
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=rgb)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=rgb)
    elif s.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        q = r * 0.5
        draw.ellipse([cx - q, cy - q, cx + q, cy + q], fill=background)
    else:
        raise ValueError(f"no drawing for shape {s.shape!r}")


def draw_scene(shapes: list[Shape], gen: Generator, image_size: int, rng: random.Random) -> Image.Image:
    big = image_size * _SUPERSAMPLE
    tone = rng.randint(200, 245)
    if gen.background == "gradient":
        other = rng.randint(150, 235)
        ramp = np.linspace(tone, other, big)[:, None] if rng.random() < 0.5 else np.linspace(tone, other, big)[None, :]
        canvas = np.broadcast_to(ramp, (big, big))[..., None].repeat(3, axis=2)
        img = Image.fromarray(canvas.astype(np.uint8))
    else:
        img = Image.new("RGB", (big, big), (tone, tone, tone))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        rgb = tuple(min(255, max(0, c + rng.randint(-18, 18))) for c in gen.colors[s.color])
        background = img.getpixel((int(min(big - 1, s.cx * big)), int(min(big - 1, s.cy * big))))
        _draw_shape(draw, s, big, rgb, background)
    small = np.asarray(img.resize((image_size, image_size), Image.Resampling.LANCZOS), dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, gen.noise, small.shape)
    return Image.fromarray(np.clip(small + noise, 0, 255).round().astype(np.uint8))


def _positions(rng: random.Random, gen: Generator, sizes: list[float]) -> list[tuple[float, float]]:
    """Centres (fractions of the image) for objects of the given sizes: none overlapping, none
    near the vertical midline, so that left/right is never ambiguous."""
    if gen.layout == "grid":
        cells = rng.sample([(i, j) for i in range(gen.columns) for j in range(gen.rows)], len(sizes))
        out = []
        for (i, j), size in zip(cells, sizes):
            w, h = 1 / gen.columns, 1 / gen.rows
            slack_x, slack_y = max(0.0, (w - size) / 2 - 0.01), max(0.0, (h - size) / 2 - 0.01)
            out.append(((i + 0.5) * w + rng.uniform(-slack_x, slack_x), (j + 0.5) * h + rng.uniform(-slack_y, slack_y)))
        return out
    while True:
        placed: list[tuple[float, float, float]] = []
        for _ in range(200):
            size = sizes[len(placed)]
            half = size / 2 + 0.02
            cx, cy = rng.uniform(half, 1 - half), rng.uniform(half, 1 - half)
            if abs(cx - 0.5) < 0.03 + size / 2:
                continue
            if all((cx - x) ** 2 + (cy - y) ** 2 > ((size + s) / 2 + 0.03) ** 2 for x, y, s in placed):
                placed.append((cx, cy, size))
                if len(placed) == len(sizes):
                    return [(x, y) for x, y, _ in placed]
        # a crowded draw: start again


def random_scene(rng: random.Random, gen: Generator, allow_held_out: bool) -> list[Shape]:
    """Objects with distinct colour-shape pairs (colours and shapes repeat); only pairs outside
    ``gen.held_out`` unless ``allow_held_out``."""
    pairs = [p for p in gen.pairs if allow_held_out or p not in gen.held_out]
    n = rng.randint(*gen.objects)
    chosen = rng.sample(pairs, n)
    sizes = [rng.uniform(*gen.sizes) for _ in chosen]
    return [Shape(s, c, x, y, size, angle=rng.uniform(-0.25, 0.25))
            for (c, s), size, (x, y) in zip(chosen, sizes, _positions(rng, gen, sizes))]


def _scene_record(shapes: list[Shape]) -> list[dict]:
    """A scene's objects as written into its rows (centre and size as fractions of the image)."""
    return [{"color": s.color, "shape": s.shape, "x": round(s.cx, 4), "y": round(s.cy, 4), "size": round(s.size, 4)}
            for s in shapes]


def _question(qtype: str, target: Shape | None, rng: random.Random) -> str:
    wording = rng.choice(WORDINGS[qtype])
    return wording.format(color=target.color, shape=target.shape) if target else wording


def scene_questions(shapes: list[Shape], rng: random.Random, every_object: bool = False,
                    prefer: set | None = None, limit: int | None = None) -> list[tuple[str, str, str, Shape | None]]:
    """``(type, question, answer, target)`` in a shuffled order. A shape question is asked only
    about an object whose colour is unique in the scene, a colour question only about a unique
    shape; position questions name both attributes. ``every_object``: every valid question of
    each type (training; at most ``limit`` of them, a random choice); otherwise one per type, about
    an object in ``prefer`` when possible."""
    by_color = [s for s in shapes if sum(o.color == s.color for o in shapes) == 1]
    by_shape = [s for s in shapes if sum(o.shape == s.shape for o in shapes) == 1]
    candidates = {"shape": by_color, "color": by_shape, "position": list(shapes)}
    answer = {"shape": lambda s: s.shape, "color": lambda s: s.color, "position": lambda s: s.side}
    qa = []
    for qtype, objs in candidates.items():
        if not objs:
            continue
        if not every_object:
            preferred = [s for s in objs if prefer and (s.color, s.shape) in prefer]
            objs = [rng.choice(preferred or objs)]
        qa += [(qtype, _question(qtype, s, rng), answer[qtype](s), s) for s in objs]
    qa.append(("count", _question("count", None, rng), NUMBERS[len(shapes)], None))
    rng.shuffle(qa)
    return qa[:limit]


# Questions per training image: every valid one for a four-object scene would be up to 13, whose
# text makes the tiny LLM the cost of a step; six keep most of the supervision per vision forward.
TRAIN_QUESTIONS_PER_IMAGE = 6


def make_synthetic_vqa(out_dir: str | Path, n_train: int = 6000, n_test: int = 300, image_size: int = 64,
                       seed: int = 0, generator: str = "shapes") -> dict[str, Path]:
    """Write ``images/``, ``train.json`` (multi-turn, one row per image, no held-out pair drawn)
    and ``test.json`` (one question per row, with ``type`` and ``combo``: ``held_out`` when the
    image holds a held-out colour-shape pair, else ``seen``) under ``out_dir``. ``generator`` is
    a name in :data:`GENERATORS`, or ``"grouped"``: the earlier quickstart task (one to three
    copies of one shape in one colour on one side, one wording per question type)."""
    gen = get_generator(generator)
    if gen is GROUPED:
        return _make_grouped(out_dir, n_train, n_test, image_size, seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    held_out = set(gen.held_out)
    rows: dict[str, list] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            shapes = random_scene(rng, gen, allow_held_out=split == "test")
            name = f"{split}_{i:06d}.png"
            draw_scene(shapes, gen, image_size, rng).save(out / "images" / name)
            qa = scene_questions(shapes, rng, every_object=split == "train", prefer=held_out,
                                limit=TRAIN_QUESTIONS_PER_IMAGE if split == "train" else None)
            objects = _scene_record(shapes)
            if split == "train":
                conv = []
                for k, (_, q, a, _) in enumerate(qa):
                    conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
                rows["train"].append({"id": f"train-{i}", "image": name, "objects": objects, "conversations": conv})
                continue
            combo = "held_out" if any((s.color, s.shape) in held_out for s in shapes) else "seen"
            for qtype, q, a, _ in qa:
                rows["test"].append({"id": f"test-{i}-{qtype}", "image": name, "type": qtype, "combo": combo, "objects": objects,
                             "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]})
    paths = {"train": out / "train.json", "test": out / "test.json", "image_folder": out / "images"}
    paths["train"].write_text(json.dumps(rows["train"]))
    paths["test"].write_text(json.dumps(rows["test"]))
    (out / "generator.json").write_text(json.dumps({"generator": gen.name, "seed": seed, "image_size": image_size,
                                                     "held_out": [list(p) for p in gen.held_out]}))
    return paths


# ----------------------------------------------------------------------------------------------
# "grouped": the earlier quickstart task, kept unchanged (same random draws, same files) so that
# its measured results stay reproducible. Every question is about the whole image, with one
# wording per type, so a blank image cannot beat the answer prior here by construction.

_GROUPED_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (235, 205, 30),
                   "purple": (150, 60, 200)}
_GROUPED_SHAPES = ("circle", "square", "triangle")
GROUPED = Generator(name="grouped", colors=_GROUPED_COLORS, shapes=_GROUPED_SHAPES, sizes=(0.2, 0.42), objects=(1, 3),
                    layout="grouped", background="flat", noise=0.0, held_out=())


def _grouped_scene(rng: random.Random) -> list[Shape]:
    n = rng.randint(1, 3)
    shape, color, side = rng.choice(_GROUPED_SHAPES), rng.choice(list(_GROUPED_COLORS)), rng.choice(("left", "right"))
    lo, hi = (0.3, 0.42) if n == 1 else (0.2, 0.27)
    while True:
        placed = []
        for _ in range(200):
            size = rng.uniform(lo, hi)
            half = size / 2 + 0.02
            x_lo, x_hi = (half, 0.5) if side == "left" else (0.5, 1 - half)
            cx, cy = rng.uniform(x_lo, x_hi), rng.uniform(half, 1 - half)
            if abs(cx - 0.5) < 0.04 + size / 2:
                continue
            if all((cx - x) ** 2 + (cy - y) ** 2 > ((size + s) / 2 + 0.03) ** 2 for x, y, s in placed):
                placed.append((cx, cy, size))
                if len(placed) == n:
                    return [Shape(shape, color, *p) for p in placed]


def _grouped_draw(shapes: list[Shape], image_size: int, rng: random.Random) -> Image.Image:
    big = image_size * _SUPERSAMPLE
    tone = rng.randint(225, 250)
    img = Image.new("RGB", (big, big), (tone, tone, tone))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        cx, cy, r = s.cx * big, s.cy * big, s.size * big / 2
        rgb = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in _GROUPED_COLORS[s.color])
        if s.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        elif s.shape == "square":
            q = r * 0.88
            draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=rgb)
        else:
            draw.polygon([(cx, cy - r * 1.05), (cx - r * 1.1, cy + r * 0.85), (cx + r * 1.1, cy + r * 0.85)], fill=rgb)
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)


def _make_grouped(out_dir, n_train: int, n_test: int, image_size: int, seed: int) -> dict[str, Path]:
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows: dict[str, list] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            shapes = _grouped_scene(rng)
            name = f"{split}_{i:06d}.png"
            _grouped_draw(shapes, image_size, rng).save(out / "images" / name)
            s = shapes[0]
            qa = [("color", "What color are the objects?", s.color), ("shape", "What shape are the objects?", s.shape),
                  ("position", "Are the objects on the left or the right?", s.side),
                  ("count", "How many objects are there?", NUMBERS[len(shapes)])]
            rng.shuffle(qa)
            objects = _scene_record(shapes)
            if split == "train":
                conv = []
                for k, (_, q, a) in enumerate(qa):
                    conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
                rows["train"].append({"id": f"train-{i}", "image": name, "objects": objects, "conversations": conv})
            else:
                rows["test"].extend({"id": f"test-{i}-{t}", "image": name, "type": t, "combo": "seen", "objects": objects,
                                     "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                       {"from": "gpt", "value": a}]} for t, q, a in qa)
    paths = {"train": out / "train.json", "test": out / "test.json", "image_folder": out / "images"}
    paths["train"].write_text(json.dumps(rows["train"]))
    paths["test"].write_text(json.dumps(rows["test"]))
    (out / "generator.json").write_text(json.dumps({"generator": "grouped", "seed": seed, "image_size": image_size,
                                                     "held_out": []}))
    return paths

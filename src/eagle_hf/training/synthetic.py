"""A synthetic visual question-answering set: coloured shapes on a plain background.

Every answer depends on the image (colour, shape, left/right position, count), and each
question type has a small closed answer set, so a text-only guesser is stuck near chance
while a model that reads the image can reach exact match. Rows are LLaVA-format; training
rows ask several questions about one image as a multi-turn conversation (one vision forward
supervises several answers), test rows ask one question each and carry a ``type``.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 205, 30),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("one", "two", "three", "four")
QUESTION_TYPES = ("color", "shape", "position", "count")

# Drawn at this multiple of the final size and downsampled, so edges are antialiased the same
# way at every size (hard aliased edges would make triangles and squares easier than real data).
_SUPERSAMPLE = 4


@dataclass
class Shape:
    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def side(self) -> str:
        return "left" if self.cx < 0.5 else "right"


def _draw(shapes: list[Shape], image_size: int, rng: random.Random) -> Image.Image:
    big = image_size * _SUPERSAMPLE
    tone = rng.randint(225, 250)
    img = Image.new("RGB", (big, big), (tone, tone, tone))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        cx, cy, r = s.cx * big, s.cy * big, s.size * big / 2
        rgb = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLORS[s.color])
        if s.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        elif s.shape == "square":
            q = r * 0.88  # equal area-ish with the circle, so size is no cue for shape
            draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=rgb)
        else:
            draw.polygon([(cx, cy - r * 1.05), (cx - r * 1.1, cy + r * 0.85), (cx + r * 1.1, cy + r * 0.85)], fill=rgb)
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)


def _layout(rng: random.Random, n: int, min_size: float, max_size: float,
            side: str | None = None) -> list[tuple[float, float, float]]:
    """Centres and sizes (fractions of the image) for `n` non-overlapping shapes, none near
    the vertical midline so that left/right is never ambiguous; all in one half with ``side``."""
    while True:
        placed = []
        for _ in range(200):
            size = rng.uniform(min_size, max_size)
            half = size / 2 + 0.02
            lo, hi = {"left": (half, 0.5), "right": (0.5, 1 - half), None: (half, 1 - half)}[side]
            cx, cy = rng.uniform(lo, hi), rng.uniform(half, 1 - half)
            if abs(cx - 0.5) < 0.04 + size / 2:
                continue
            if all((cx - x) ** 2 + (cy - y) ** 2 > ((size + s) / 2 + 0.03) ** 2 for x, y, s in placed):
                placed.append((cx, cy, size))
                if len(placed) == n:
                    return placed
        # a crowded draw: start again


def random_scene(rng: random.Random, max_objects: int = 3, grouped: bool = True) -> list[Shape]:
    """``grouped``: 1..max_objects copies of one shape in one colour, all on one side, so every
    question is about the whole image. Otherwise objects of distinct colours anywhere, and
    questions name an object by its colour (harder: the model must bind colour to shape)."""
    n = rng.randint(1, max_objects)
    if grouped:
        shape, color, side = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(("left", "right"))
        lo, hi = (0.3, 0.42) if n == 1 else (0.2, 0.27)
        return [Shape(shape, color, *pos) for pos in _layout(rng, n, lo, hi, side)]
    colors = rng.sample(list(COLORS), n)
    return [Shape(rng.choice(SHAPES), c, *pos) for c, pos in zip(colors, _layout(rng, n, 0.22, 0.3))]


def scene_questions(shapes: list[Shape], rng: random.Random, every_object: bool = False) -> list[tuple[str, str, str]]:
    """(type, question, answer), one per question type, in a shuffled order. The wording never
    depends on the answer (no "the shapes" for two of them), so the text alone gives nothing away.
    With ``every_object`` (ungrouped scenes) a shape and a position question for each object."""
    count = ("count", "How many objects are there?", NUMBERS[len(shapes) - 1])
    if len({(s.shape, s.color, s.side) for s in shapes}) == 1:
        s = shapes[0]
        qa = [("color", "What color are the objects?", s.color), ("shape", "What shape are the objects?", s.shape),
              ("position", "Are the objects on the left or the right?", s.side), count]
    else:
        unique_shapes = [s for s in shapes if sum(o.shape == s.shape for o in shapes) == 1]
        asked = shapes if every_object else [rng.choice(shapes)]
        qa = [("shape", f"What shape is the {s.color} object?", s.shape) for s in asked]
        asked = shapes if every_object else [rng.choice(shapes)]
        qa += [("position", f"Is the {s.color} object on the left or the right?", s.side) for s in asked]
        qa.append(count)
        if unique_shapes:
            ref = rng.choice(unique_shapes)
            qa.append(("color", f"What color is the {ref.shape}?", ref.color))
    rng.shuffle(qa)
    return qa


def make_synthetic_vqa(out_dir: str | Path, n_train: int = 6000, n_test: int = 300, image_size: int = 64,
                       seed: int = 0, max_objects: int = 3, grouped: bool = True) -> dict[str, Path]:
    """Write ``images/``, ``train.json`` (multi-turn, one row per image) and ``test.json`` (one
    question per row, with ``type``) under ``out_dir``; test images are never seen in training."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train, test = [], []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            shapes = random_scene(rng, max_objects, grouped)
            name = f"{split}_{i:06d}.png"
            _draw(shapes, image_size, rng).save(out / "images" / name)
            qa = scene_questions(shapes, rng, every_object=split == "train")
            if split == "train":
                conv = []
                for k, (_, q, a) in enumerate(qa):
                    conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
                train.append({"id": f"train-{i}", "image": name, "conversations": conv})
            else:
                for qtype, q, a in qa:
                    test.append({"id": f"test-{i}-{qtype}", "image": name, "type": qtype, "conversations": [
                        {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]})
    paths = {"train": out / "train.json", "test": out / "test.json", "image_folder": out / "images"}
    paths["train"].write_text(json.dumps(train))
    paths["test"].write_text(json.dumps(test))
    return paths

"""How fast can the tiny vision experts learn an object's attributes at all, without the LLM?

The compositional quickstart task (issue 15) needs the image token under an object to say the
object's shape. This trains the vision tower and projector of a tiny EAGLE *directly* on that:
two linear heads read shape and colour off the projected token under each object (objects alone
in their grid cell, as the linear probe of `eagle_hf.training.probe`), with cross-entropy and
AdamW, on a `make_synthetic_vqa` set. No LLM is involved, so this is an upper bound on what
the answers' gradient can teach the experts in the same number of steps.

Accuracy is reported separately for objects whose colour-shape pair appears in training
("seen") and for the generator's held-out pairs, which no training image holds. Baseline: chance,
1 / (number of shapes) and 1 / (number of colours), printed with the table.

    python benchmarks/vision_readout.py --generator shapes --steps 800
    python benchmarks/vision_readout.py --only convnext
    python benchmarks/vision_readout.py --timm resnet10t --timm-args '{"channels": [32, 64, 96, 128], "stem_width": 16}'
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, print_table  # noqa: E402
from eagle_hf.processing import EagleImageProcessor, load_image_rgb  # noqa: E402
from eagle_hf.training.probe import lone_objects  # noqa: E402


def vision_config(args):
    from eagle_hf.modeling.presets import tiny_train_config

    vision = tiny_train_config().vision_config.to_dict()
    if args.timm:
        vision["expert_order"] = ["timm"]
        vision["timm_config"] = dict(architecture=args.timm, model_args=json.loads(args.timm_args),
                                     feature_index=args.timm_feature_index, input_size=vision["image_size"])
    elif args.only:
        vision["expert_order"] = [args.only]
    return vision


def load_split(data: Path, split: str, limit: int, image_processor, grid: int, shapes: list, colors: list):
    """``pixel_values`` [N, 3, H, W] (the model's own image processor, run once up front so the
    training loop only slices) and one (image, token, shape, colour) row per lone object."""
    rows = {}
    for row in json.loads((data / f"{split}.json").read_text()):
        rows.setdefault(row["image"], row)  # test sets ask several questions per image
    rows = list(rows.values())[:limit]
    pixels = torch.cat([image_processor([load_image_rgb(data / "images" / r["image"]) for r in rows[k:k + 500]],
                                        return_tensors="pt")["pixel_values"] for k in range(0, len(rows), 500)])
    objects = [(i, cell, shapes.index(o["shape"]), colors.index(o["color"]))
               for i, r in enumerate(rows) for o, cell in lone_objects(r["objects"], grid)]
    return pixels, torch.tensor(objects)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="shapes")
    p.add_argument("--data", help="an existing make_synthetic_vqa folder (default: generate one)")
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="keep one expert of the tiny-train preset")
    p.add_argument("--timm", help="replace the experts by this one timm architecture")
    p.add_argument("--timm-args", default="{}")
    p.add_argument("--timm-feature-index", type=int, default=3)
    args = p.parse_args()

    from eagle_hf import EagleVisionConfig, EagleVisionTower
    from eagle_hf.modeling.modeling_eagle import EagleMultiModalProjector
    from eagle_hf.modeling.presets import tiny_train_config
    from eagle_hf.training.synthetic import get_generator, make_synthetic_vqa

    torch.manual_seed(args.seed)
    config = tiny_train_config()
    config.vision_config = EagleVisionConfig(**vision_config(args))
    vision = config.vision_config
    gen = get_generator(args.generator)
    data = Path(args.data or f"vision-readout-{args.generator}-{args.seed}-{args.n_train}")
    if not (data / "test.json").exists():
        make_synthetic_vqa(data, args.n_train, 300, image_size=vision.image_size, seed=args.seed, generator=args.generator)
    shapes, colors = list(gen.shapes), list(gen.colors)
    image_processor = EagleImageProcessor(size=vision.image_size, image_mean=list(vision.image_mean),
                                          image_std=list(vision.image_std))
    x_train, o_train = load_split(data, "train", args.n_train, image_processor, vision.grid_size, shapes, colors)
    x_test, o_test = load_split(data, "test", 300, image_processor, vision.grid_size, shapes, colors)
    held_out = torch.tensor([(colors[c], shapes[s]) in set(gen.held_out) for _, _, s, c in o_test.tolist()])

    tower = EagleVisionTower(vision)
    projector = EagleMultiModalProjector(config)
    width = config.text_config.hidden_size
    heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(width, len(shapes)), "colour": torch.nn.Linear(width, len(colors))})
    params = [*tower.parameters(), *projector.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0)

    def tokens(pixel_values):
        return projector(tower(pixel_values).last_hidden_state)

    def logits(tok, objects):
        feats = tok[objects[:, 0], objects[:, 1]]
        return heads["shape"](feats), heads["colour"](feats)

    by_image: dict[int, list[int]] = {}
    for k, i in enumerate(o_train[:, 0].tolist()):
        by_image.setdefault(i, []).append(k)
    g = torch.Generator().manual_seed(args.seed)
    report = sorted({s for s in (50, 100, 200, 400, 800, 1600, 3200) if s <= args.steps} | {args.steps})
    rows, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(x_train), (args.batch_size,), generator=g)
        picked = o_train[[k for i in batch.tolist() for k in by_image.get(i, [])]].clone()
        picked[:, 0] = torch.tensor([batch.tolist().index(i) for i in picked[:, 0].tolist()])
        shape_logits, colour_logits = logits(tokens(x_train[batch]), picked)
        loss = (torch.nn.functional.cross_entropy(shape_logits, picked[:, 2])
                + torch.nn.functional.cross_entropy(colour_logits, picked[:, 3]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in report:
            tower.eval()
            projector.eval()
            with torch.no_grad():
                shape_hit, colour_hit = (lg.argmax(1) == o_test[:, col]
                                         for lg, col in zip(logits(tokens(x_test), o_test), (2, 3)))
            tower.train()
            projector.train()

            def acc(hit, mask):
                return round(hit[mask].float().mean().item(), 3) if mask.any() else None

            rows.append({"step": step, "train_loss": round(loss.item(), 3),
                         "shape_seen": acc(shape_hit, ~held_out), "shape_held_out": acc(shape_hit, held_out),
                         "colour_seen": acc(colour_hit, ~held_out), "colour_held_out": acc(colour_hit, held_out),
                         "s_per_step": round((time.perf_counter() - start) / step, 3)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"# experts {vision.expert_order}, grid {vision.grid_size}, {args.generator}: {len(o_test)} test objects "
          f"({int(held_out.sum())} of held-out pairs); chance: shape {1 / len(shapes):.2f}, colour {1 / len(colors):.2f}")
    print_table(rows, list(rows[0]))
    print(json.dumps({"benchmark": "vision_readout", "machine": machine(), "args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()

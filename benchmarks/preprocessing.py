"""Benchmark 2: preprocessing throughput, eagle-hf image processor vs the original path.

Original path (per batch of images): PIL expand-to-square with the mean colour, transformers'
CLIP image processor (shortest edge -> crop, rescale, normalise), then, because the original
Pix2Struct expert re-processed the model input on every forward, the de-normalisation and
`Pix2StructImageProcessorPil` round trip on the CPU. eagle-hf does only the first two steps
(Pix2Struct patches are made on the tensor inside the model).

    python benchmarks/preprocessing.py [--size 1024] [--counts 1 32]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, print_table, timed  # noqa: E402

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def make_images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(640, 480), (480, 640), (800, 800), (1280, 720)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
            (sizes[i % len(sizes)] for i in range(n))]


def original_path(images, size: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.pix2struct.image_processing_pil_pix2struct import Pix2StructImageProcessorPil

    clip = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=MEAN, image_std=STD)
    background = tuple(int(m * 255) for m in MEAN)
    squares = []
    for im in images:
        side = max(im.size)
        canvas = Image.new("RGB", (side, side), background)
        canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        squares.append(canvas)
    pixel_values = clip(images=squares, return_tensors="pt")["pixel_values"]
    raw = (pixel_values * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    p2s = Pix2StructImageProcessorPil(is_vqa=False, max_patches=2048)
    patches = p2s(images=list(raw.numpy()), return_tensors="pt", input_data_format="channels_first")
    return pixel_values, patches["flattened_patches"]


def eagle_path(processor, images):
    return processor(images=images, return_tensors="pt")["pixel_values"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from eagle_hf.processing import EagleImageProcessor

    processor = EagleImageProcessor(size=args.size, image_mean=MEAN, image_std=STD)
    rows = []
    for n in args.counts:
        images = make_images(n)
        base_s, (base_pixels, _) = timed(lambda: original_path(images, args.size), args.repeats)
        ours_s, ours_pixels = timed(lambda: eagle_path(processor, images), args.repeats)
        rows.append({"images": n, "original_img_per_s": round(n / base_s, 2), "eagle_hf_img_per_s": round(n / ours_s, 2),
                     "speedup": round(base_s / ours_s, 2),
                     "max_abs_diff": float((base_pixels - ours_pixels).abs().max())})
    print_table(rows, ["images", "original_img_per_s", "eagle_hf_img_per_s", "speedup", "max_abs_diff"])
    print(json.dumps({"benchmark": "preprocessing", "machine": machine(), "size": args.size, "rows": rows,
                      "target_speedup_ge_3": all(r["speedup"] >= 3 for r in rows)}))


if __name__ == "__main__":
    main()

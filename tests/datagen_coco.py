"""A tiny COCO 2017 in the standard layout, for the detection tests (seconds to write, no download).

``write_tiny_coco(root)`` writes ``annotations/instances_{train,val}2017.json`` and small JPEG
images under ``train2017/`` and ``val2017/``: coloured rectangles on noise, one box per
rectangle, of COCO's small, medium and large areas, with COCO's 80 categories (names and ids)
so MMDetection's ``CocoDataset`` and ``CocoMetric`` read it as COCO.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# COCO 2017's 80 categories: (id, name).
CATEGORIES = [
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
]
# Box sizes (w, h) by COCO area range: small < 32², medium < 96², large.
SIZES = ((20, 16), (48, 40), (110, 96))


def _image(
    rng: np.random.Generator, width: int, height: int, count: int
) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    boxes = []
    for i in range(count):
        w, h = SIZES[(i + int(rng.integers(0, 3))) % len(SIZES)]
        w, h = min(w, width - 2), min(h, height - 2)
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = rng.integers(120, 256, size=3, dtype=np.uint8)
        pixels[y : y + h, x : x + w] = colour
        category = CATEGORIES[int(rng.integers(0, 5))][0]  # a few classes, so some repeat
        boxes.append(([float(x), float(y), float(w), float(h)], category))
    return pixels, boxes


def write_split(root: Path, split: str, n_images: int, rng: np.random.Generator, first_id: int) -> Path:
    from PIL import Image

    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_id * 100
    for k in range(n_images):
        image_id = first_id + k
        width, height = 128, 112  # landscape: MMDetection's aspect-ratio batches stay full
        pixels, boxes = _image(rng, width, height, count=2 + k % 2)
        name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(image_dir / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for (x, y, w, h), category in boxes:
            ann_id += 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    data = {
        "info": {"description": "tiny COCO-format test data"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "none"} for i, n in CATEGORIES],
    }
    path = root / "annotations" / f"instances_{split}2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_tiny_coco(root: str | Path, n_train: int = 4, n_val: int = 2, seed: int = 0) -> Path:
    """A COCO 2017 layout under ``root`` with ``n_train`` / ``n_val`` images; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    write_split(root, "train", n_train, rng, first_id=1)
    write_split(root, "val", n_val, rng, first_id=1000)
    return root

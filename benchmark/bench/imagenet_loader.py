"""ImageNet data loading per worker: this suite's pipeline vs torchvision's ``ImageFolder`` + transforms.

    python -m benchmark.bench.imagenet_loader [--quick] [--device cpu|cuda] [--threads 1]
        [--folder DIR] [--classes 4 --per-class 64 --sizes 500x375] [--repeats 7]
        [--out reports/bench/imagenet_loader.json]

What one DataLoader worker does per training image (``num_workers=0``: read the file,
decode, random-resized-crop to 224, flip, make a tensor), timed for:

* ``torchvision``: ``ImageFolder(train, transform=Compose([RandomResizedCrop(224),
  RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)]))`` — the references' loader
  (mdistiller ``get_imagenet_train_transform``), float32 out;
* ``ours``: :class:`benchmark.data.ImageNetDistill` (``split='train'``): the same crop and
  flip, pixel-identical, uint8 out; ``/255`` and ``Normalize`` run on the device in the
  batch preprocessor (timed separately below, per image, on ``--device``);
* ``ours_draft``: the same with ``draft=True`` (reduced-size JPEG decoding where the crop
  allows it; not pixel-identical, see ``benchmark/data/imagenet.py``);
* and the val pipelines (``Resize(256)`` + ``CenterCrop(224)``) the same way.

Images: a generated ImageFolder of smooth random "photos" (a bicubic colour field, mid-scale
detail and noise; at 500x375 and quality 90 they compress to ~100 KB, like ImageNet's
~110 KB average JPEG), or ``--folder`` with a real ``train/`` (and ``val/``). Every
repetition runs each pipeline once over the same images, order rotated; reported:
images/s from the median repetition and the ratio ours / torchvision.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .timing import (
    add_device_arguments,
    apply_device_arguments,
    env_info,
    interleaved_ms,
    median,
    write_json_and_markdown,
)

QUICK = {"classes": 2, "per_class": 12, "repeats": 3}
DEFAULT = {"classes": 4, "per_class": 64, "repeats": 7}
WNID_BASE = 1_440_764  # n01440764, ImageNet's first class folder


def realistic_photo(rng: np.random.Generator, width: int, height: int):
    """A PIL RGB image that JPEG-compresses like a photo (~100 KB at 500x375, quality 90)."""
    from PIL import Image

    coarse = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    mid = rng.normal(0, 40, size=(height // 3 + 2, width // 3 + 2, 3)).astype(np.float32)
    detail = np.stack(
        [
            np.asarray(Image.fromarray(mid[..., c], mode="F").resize((width, height), Image.Resampling.BICUBIC))
            for c in range(3)
        ],
        axis=-1,
    )
    pixels = field + detail + rng.normal(0, 8, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_folder(
    root: Path, classes: int, per_class: int, sizes: list[tuple[int, int]], seed: int = 0
) -> dict[str, Any]:
    """train/ and val/ ImageFolder trees of realistic JPEGs (sizes cycled); returns their stats."""
    rng = np.random.default_rng(seed)
    total_bytes = count = 0
    for split, n in (("train", per_class), ("val", max(2, per_class // 4))):
        for c in range(classes):
            folder = root / split / f"n{WNID_BASE + c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                width, height = sizes[(c * n + k) % len(sizes)]
                path = folder / f"img_{k:05d}.JPEG"
                realistic_photo(rng, width, height).save(path, format="JPEG", quality=90)
                total_bytes += path.stat().st_size
                count += 1
    return {
        "images": count,
        "mean_jpeg_kb": round(total_bytes / count / 1024, 1),
        "sizes": [f"{w}x{h}" for w, h in sizes],
        "classes": classes,
        "train_per_class": per_class,
    }


def _pass(dataset, key) -> Any:
    def run() -> None:
        for index in range(len(dataset)):
            key(dataset[index])

    return run


def pipelines(root: Path) -> dict[str, Any]:
    """name -> (dataset, how to take the image from an item); the same images in each."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from benchmark.data import IMAGENET_MEAN, IMAGENET_STD, ImageNetDistill

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    out = {
        "train_torchvision": (
            ImageFolder(
                str(root / "train"),
                transform=T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]),
            ),
            lambda item: item[0],
        ),
        "train_ours": (ImageNetDistill(root, "train"), lambda item: item["inputs"]),
        "train_ours_draft": (ImageNetDistill(root, "train", draft=True), lambda item: item["inputs"]),
    }
    if (root / "val").is_dir():
        out.update(
            {
                "val_torchvision": (
                    ImageFolder(
                        str(root / "val"),
                        transform=T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize]),
                    ),
                    lambda item: item[0],
                ),
                "val_ours": (ImageNetDistill(root, "val"), lambda item: item["inputs"]),
                "val_ours_draft": (ImageNetDistill(root, "val", draft=True), lambda item: item["inputs"]),
            }
        )
    return out


def preprocess_ms_per_image(device: str, batch_size: int = 64, repeats: int = 5) -> float:
    """What moved out of the workers: the batch preprocessor's normalisation, per image, on ``device``."""
    from benchmark.data import IMAGENET_MEAN, IMAGENET_STD, DistillDataPreprocessor

    preprocessor = DistillDataPreprocessor(IMAGENET_MEAN, IMAGENET_STD).to(device)
    batch = {
        "inputs": torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=device),
        "target": torch.zeros(batch_size, dtype=torch.long, device=device),
    }
    times = interleaved_ms({"preprocess": lambda: preprocessor(batch, training=True)}, device, repeats)
    return median(times["preprocess"]) / batch_size


def compare(root: Path, repeats: int, device: str) -> dict[str, Any]:
    chosen = pipelines(root)
    sizes = {name: len(dataset) for name, (dataset, _) in chosen.items()}
    torch.manual_seed(0)
    times = interleaved_ms({name: _pass(dataset, key) for name, (dataset, key) in chosen.items()}, "cpu", repeats)
    result: dict[str, Any] = {"repeats": repeats, "images_per_pass": sizes}
    for name, values in times.items():
        result[f"{name}_images_per_s"] = sizes[name] / (median(values) / 1e3)
        result[f"{name}_times_ms"] = values
    for split in ("train", "val"):
        base = result.get(f"{split}_torchvision_images_per_s")
        if base:
            result[f"{split}_ratio"] = result[f"{split}_ours_images_per_s"] / base
            result[f"{split}_draft_ratio"] = result[f"{split}_ours_draft_images_per_s"] / base
    result["device_preprocess_ms_per_image"] = preprocess_ms_per_image(device)
    return result


def to_markdown(report: dict[str, Any]) -> str:
    r, env, data = report["result"], report["env"], report["data"]
    lines = [
        "# ImageNet loading per worker: this suite's pipeline vs torchvision ImageFolder + transforms",
        "",
        f"One worker (num_workers=0), file read + decode + transform per image; {data['images']} generated JPEGs "
        f"({', '.join(data['sizes'])}, mean {data['mean_jpeg_kb']} KB); images/s from the median of {r['repeats']} "
        f"interleaved passes (CPU, {env['threads']} torch thread(s), torch {env['torch']}, {env['date']}).",
        "",
        "| split | torchvision img/s | ours img/s | ratio | ours + draft img/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for split in ("train", "val"):
        if f"{split}_ratio" in r:
            lines.append(
                f"| {split} | {r[f'{split}_torchvision_images_per_s']:.0f} | {r[f'{split}_ours_images_per_s']:.0f} | "
                f"**{r[f'{split}_ratio']:.2f}x** | {r[f'{split}_ours_draft_images_per_s']:.0f} | "
                f"{r[f'{split}_draft_ratio']:.2f}x |"
            )
    lines += [
        "",
        "ours = torchvision's crop/flip calls on the PIL image (pixel-identical), uint8 out; "
        "torchvision = float32 out after ToTensor + Normalize. draft = reduced-size JPEG decoding where the "
        "crop allows it (not pixel-identical; only triggers on images >= 2x the output size).",
        f"Normalisation moved to the batch preprocessor costs {r['device_preprocess_ms_per_image'] * 1e3:.1f} us "
        f"per image on {env['device']} (batch 64).",
        "",
    ]
    return "\n".join(lines)


def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="few images, 3 repetitions (for tests)")
    parser.add_argument(
        "--folder", type=Path, help="an existing ImageFolder root with train/ (and val/) instead of generated images"
    )
    parser.add_argument("--classes", type=int)
    parser.add_argument("--per-class", type=int)
    parser.add_argument("--sizes", type=_sizes, default=[(500, 375)], help="generated image sizes WxH, comma-separated")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/imagenet_loader.json"))
    args = parser.parse_args(argv)
    apply_device_arguments(parser, args)
    settings = {**(QUICK if args.quick else DEFAULT)}
    settings.update(
        {k: v for k, v in (("classes", args.classes), ("per_class", args.per_class), ("repeats", args.repeats)) if v}
    )
    with tempfile.TemporaryDirectory(prefix="imagenet_loader_") as tmp:
        if args.folder:
            root, data = args.folder, {"images": "user folder", "mean_jpeg_kb": "?", "sizes": [str(args.folder)]}
        else:
            root = Path(tmp)
            data = write_folder(root, settings["classes"], settings["per_class"], args.sizes)
        result = compare(root, settings["repeats"], args.device)
    report = {"env": env_info(args.device), "data": data, "result": result}
    markdown = to_markdown(report)
    write_json_and_markdown(report, args.out, markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()

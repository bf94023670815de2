#!/usr/bin/env python
"""Images/s of the data path alone: prepared-dataset batches and the batched kornia views.

A benchmark, not a test. Per shape (mini, cifar, imagenet) it times, interleaved in
``--rounds`` rounds, with nothing else in the step:

* loader   = ``sslaug.engine.batches.BatchSource`` over a prepared dataset written here in
             the real format (``sslaug.data.formats``): the ``array`` format at mini /
             cifar (uint8 ``.npy``, the whole split on the device, a batch is one index
             op) and the ``imagefolder`` format at imagenet (JPEG files of 375 x 500 crops
             of real photos, decoded, resized and centre-cropped to 224; in this process
             by default, in ``--workers`` DataLoader workers otherwise). Each round starts
             a fresh epoch, as the Trainer does (worker start-up included);
* loader, crops on decode = pretraining's image-folder path: the same JPEG files, each
             decoded whole (draft mode) and cropped per view by torchvision's
             RandomResizedCrop in ``--crop-workers`` DataLoader workers (``sslaug.data.crops``),
             and ``+ views`` = the ViewMaker's pipelines on those pre-cropped batches;
* views    = the run's ``ViewMaker`` (SimCLR's two batched kornia pipelines, the scale's
             view overrides) on one uint8 batch, both views;
* loader+views = both, as a training step consumes them;
* lightly (context only) = lightly's per-image torchvision ``SimCLRTransform`` (both
             views) on PIL images in this one process; lightly runs it in DataLoader worker
             processes in parallel with the step, so this is a per-core rate.

Example (about 1-2 min on one CPU thread):
    .venv/bin/python bench/dataloader_throughput.py --out bench/dataloader_cpu.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _timing as T
import numpy as np
import torch
from _steps import SHAPES, Shape, method_settings, random_images

from sslaug.augment.view_maker import ViewMaker
from sslaug.augment.views import ViewPipeline, recipe_for
from sslaug.data.formats import finish_array_meta, save_array_split, write_imagefolder_dataset
from sslaug.engine.batches import BatchSource

#: Batches per round and batch size per shape: (CPU, CUDA).
BATCHES = {"mini": (4, 50), "cifar": (2, 50), "imagenet": (1, 10)}
BATCH = {"mini": (128, 128), "cifar": (256, 256), "imagenet": (32, 256)}


def photo_crops(n: int, seed: int, height: int = 375, width: int = 500) -> Iterator[np.ndarray]:
    """``n`` uint8 HWC crops of real photos (scikit-learn's two sample images), randomly flipped."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - min(height, photo.shape[0]) + 1)
        left = rng.integers(0, photo.shape[1] - width + 1)
        crop = photo[top : top + height, left : left + width]
        yield crop[:, ::-1] if rng.random() < 0.5 else crop


def prepare_array(directory: Path, shape: Shape, n: int, seed: int) -> None:
    """A prepared ``array`` dataset of ``n`` random images (the loader's cost does not depend on content)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, shape.image_size, shape.image_size, 3), dtype=np.uint8)
    save_array_split(directory, "train", images, rng.integers(0, 10, n))
    finish_array_meta(directory, "bench", [str(c) for c in range(10)], ["train"], {"bench": True})


def prepare_imagefolder(directory: Path, n: int, seed: int) -> None:
    """A prepared ``imagefolder`` dataset over ``n`` JPEG files (quality 90, as ImageNet's)."""
    from PIL import Image

    root = directory / "images"
    (root / "c0").mkdir(parents=True)
    rows = []
    for i, crop in enumerate(photo_crops(n, seed)):
        Image.fromarray(np.ascontiguousarray(crop)).save(root / "c0" / f"{i:05d}.jpg", quality=90)
        rows.append((f"c0/{i:05d}.jpg", 0))
    write_imagefolder_dataset(directory, "bench", root, ["c0"], {"train": rows}, {"bench": True}, image_size=224)


def bench_shape(shape: Shape, args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    gpu = int(device.type == "cuda")
    batch = args.batch_size or BATCH[shape.name][gpu]
    per_round = args.batches or BATCHES[shape.name][gpu]
    directory = work / shape.name
    directory.mkdir()
    n_items = max(4 * batch, batch * per_round)
    t0 = time.perf_counter()
    if shape.name == "imagenet":
        prepare_imagefolder(directory, n_items, args.seed)
    else:
        prepare_array(directory, shape, n_items, args.seed)
    prepare_s = time.perf_counter() - t0
    source = BatchSource(
        directory, "train", batch, args.seed, device, image_size=shape.image_size, num_workers=args.workers
    )
    epochs = itertools.count()

    def batches(n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A fresh epoch per round, as the Trainer starts one: with workers this includes their
        # start-up, and no batch is prefetched while the other sides are timed.
        return itertools.islice(source.epoch(next(epochs)), n)

    _, overrides = method_settings("simclr", shape) or ({}, {})
    maker = ViewMaker([ViewPipeline(r, shape.image_size) for r in recipe_for("simclr", overrides)]).to(device)
    fixed = random_images(batch, shape.image_size, device, args.seed)
    indices = torch.arange(batch)

    def loader(start: int, n: int) -> None:
        for _ in batches(n):
            pass

    def views(start: int, n: int) -> None:
        for _ in range(n):
            maker(fixed, indices, 0)

    def both(start: int, n: int) -> None:
        for images, idx in batches(n):
            maker(images, idx, 0)

    sides: dict[str, T.Side] = {"loader": loader, "views": views, "loader+views": both}
    if shape.name == "imagenet" and args.crop_workers >= 0:
        cropping = BatchSource(directory, "train", batch, args.seed, device, num_workers=args.crop_workers)
        cropping.crop_on_decode(maker.crop_specs())

        def crops_on_decode(start: int, n: int) -> None:
            for _ in itertools.islice(cropping.epoch(next(epochs)), n):
                pass

        def crops_and_views(start: int, n: int) -> None:
            for crops, idx in itertools.islice(cropping.epoch(next(epochs)), n):
                maker(crops, idx, 0)

        sides[f"loader, crops on decode ({args.crop_workers} workers)"] = crops_on_decode
        sides[f"loader+views, crops on decode ({args.crop_workers} workers)"] = crops_and_views
    if args.lightly:
        from lightly.transforms import SimCLRTransform
        from PIL import Image

        size = shape.image_size
        transform = SimCLRTransform(input_size=size, gaussian_blur=overrides.get("blur_p", 0.5))
        if shape.name == "imagenet":
            pils = [Image.fromarray(np.ascontiguousarray(c)) for c in photo_crops(batch, args.seed)]
        else:
            pils = [Image.fromarray(img.permute(1, 2, 0).cpu().numpy()) for img in fixed]

        def lightly_views(start: int, n: int) -> None:
            for _ in range(n):
                for im in pils:
                    transform(im)

        sides["lightly per-image, 1 process"] = lightly_views
    seconds = T.interleaved(sides, per_round, args.rounds, 1, device)
    return {
        "shape": shape.name,
        "format": "imagefolder (JPEG 375x500 -> 224)" if shape.name == "imagenet" else "array (uint8 .npy)",
        "image_size": shape.image_size,
        "batch_size": batch,
        "batches_per_round": per_round,
        "workers": args.workers if shape.name == "imagenet" else "n/a (array on device)",
        "crop_workers": args.crop_workers if shape.name == "imagenet" else "n/a (array on device)",
        "dataset_items": n_items,
        "prepare_seconds": prepare_s,
        "images_per_s": {name: T.rate_stats(s, per_round * batch) for name, s in seconds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="mini,cifar,imagenet", help=f"comma list of {','.join(SHAPES)}")
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch (default: 128 / 256 / 32 on CPU, 256 at imagenet on CUDA)"
    )
    p.add_argument("--batches", type=int, default=0, help="batches per round (default: CPU 4/2/1, CUDA 50/50/10)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers of the imagefolder loader (default 0: in-process decode, a per-core "
        "rate; on a GPU node use the scale's num_workers, e.g. 10, and --batches >= 20)",
    )
    p.add_argument(
        "--crop-workers",
        type=int,
        default=2,
        help="DataLoader workers of the crop-on-decode imagefolder loader (pretraining's path); -1 skips it",
    )
    p.add_argument("--no-lightly", dest="lightly", action="store_false", help="skip lightly's per-image context line")
    T.add_device_args(p)
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            p.error(f"--shapes: unknown shape {s!r}; choose from {sorted(SHAPES)}")
    device = T.setup_device(args)
    meta = T.describe(device, args, views="SimCLR recipe, 2 views, batched kornia (ViewMaker)")
    T.print_header(meta)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sslaug-bench-data-") as tmp:
        results = [bench_shape(SHAPES[s], args, device, Path(tmp)) for s in shapes]
    meta["wall_seconds"] = time.perf_counter() - t0
    rows = []
    for r in results:
        for name, stats in r["images_per_s"].items():
            rows.append(
                [
                    f"{r['shape']} {r['image_size']}px b{r['batch_size']}",
                    name,
                    T.fmt_rate(stats, 0),
                    r["format"] if name.startswith("loader") else "",
                ]
            )
    T.print_table(["shape", "path", "images/s (2 views each)", "dataset format"], rows)
    print(f"# median [min-max] over {args.rounds} interleaved rounds; wall {meta['wall_seconds']:.0f} s", flush=True)
    T.write_json(args.out, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

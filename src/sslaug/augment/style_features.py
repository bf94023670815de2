"""Precompute SASSL's external style representations (rule entry point).

SASSL's *external* stylization "pre-computes representations of an arbitrary style
dataset and samples from them during pre-training" (000_88efd4324cd49182.txt, Sec. 4).
This module embeds every image of a prepared style set (split ``train``; array format,
e.g. mini's generated styles, or imagefolder format, e.g. DTD, Painter by Numbers,
ImageNet) once with the stylizer's style predictor and stores the 100-d vectors::

    python -m sslaug.augment.style_features --styles DIR --stylizer WEIGHTS|random \\
        --config '{"tiny": true}' --batch-size 64 --workers 4 --max-images 100000 --out features.pt

Images are read through the dataset loaders of :mod:`sslaug.data.formats`. Image-folder
styles are decoded at the predictor's input size (Magenta: shorter side 256, centre-cropped
to 256 x 256, as Magenta crops its training style images, so that a batch has one shape);
array styles keep their stored size and the predictor resizes them. ``--max-images N``
embeds a seeded uniform subset of N images (sorted, seed :data:`SUBSET_SEED`) when the set
is larger.

Output (``torch.save``, written atomically)::

    {"embeddings": float16 [N, 100], "source": DIR, "format": "array" | "imagefolder",
     "count": N, "total_images": size of the split, "indices": int64 [N] or None (all),
     "subset_seed": SUBSET_SEED, "decode_size": px or None,
     "stylizer": WEIGHTS or "random", "stylizer_config": {...},
     "sha256_of_images": sha256 of DIR/train_images.npy (array) or of DIR/train_index.csv (imagefolder)}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from sslaug.augment.stylizer import Stylizer, StylizerConfig, load_stylizer
from sslaug.data.formats import ClassificationDataset, DataError, array_paths, open_classification, read_meta
from sslaug.io import atomic_torch_save, sha256sum

logger = logging.getLogger(__name__)

STYLE_SPLIT = "train"
STYLE_FORMATS = ("array", "imagefolder")
#: Seed of the ``--max-images`` subset: fixed, so every run of a scale samples the same styles.
SUBSET_SEED = 0


class StyleSetError(DataError):
    """The style set cannot be embedded (empty, wrong format); the message names its directory."""


def parse_config(value: str | None) -> StylizerConfig:
    """``--config``: a JSON file path or an inline JSON object (empty -> default config)."""
    if not value:
        return StylizerConfig()
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    try:
        return StylizerConfig.from_dict(json.loads(text))
    except json.JSONDecodeError as err:
        raise ValueError(f"--config: neither a JSON file nor valid JSON: {value!r} ({err})") from err


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def open_style_set(styles_dir: str | os.PathLike, decode_size: int | None = None) -> ClassificationDataset:
    """The style images of a prepared set as a dataset of ``(uint8 3 x H x W, label)``; empty -> error.

    ``decode_size`` is the side length image-folder styles are decoded to (shorter side
    resized, centre crop; ``None``: the size in the set's meta.json). Array styles keep
    their stored size: they are small, and the predictor resizes them itself.
    """
    styles_dir = Path(styles_dir)
    meta = read_meta(styles_dir)
    if meta.get("format") not in STYLE_FORMATS:
        raise StyleSetError(
            f"style set {styles_dir}: format {meta.get('format')!r}, expected one of {list(STYLE_FORMATS)}"
        )
    if STYLE_SPLIT not in meta.get("splits", {}):
        raise StyleSetError(
            f"style set {styles_dir} has no split {STYLE_SPLIT!r} (has: {', '.join(sorted(meta.get('splits', {})))})"
        )
    if int(meta["splits"][STYLE_SPLIT]) == 0:
        raise StyleSetError(f"style set {styles_dir} is empty: split {STYLE_SPLIT!r} has no images")
    image_size = decode_size if meta["format"] == "imagefolder" else None
    dataset = open_classification(styles_dir, STYLE_SPLIT, image_size=image_size)
    if len(dataset) == 0:  # meta and data disagree: trust the data
        where = array_paths(styles_dir, STYLE_SPLIT)[0] if meta["format"] == "array" else styles_dir
        raise StyleSetError(f"style set {styles_dir} is empty: {where} has 0 images")
    return dataset


def style_subset(total: int, max_images: int | None, seed: int = SUBSET_SEED) -> np.ndarray | None:
    """Sorted indices of a seeded uniform subset of ``max_images`` of ``total``; ``None`` = all images."""
    if max_images is not None and max_images < 0:
        raise ValueError(f"max images must be >= 0 (0 = all), got {max_images}")
    if not max_images or total <= max_images:
        return None
    # Sorted: an image folder is then read in index order, which keeps directory reads local.
    return np.sort(np.random.default_rng(seed).choice(total, size=max_images, replace=False))


@torch.inference_mode()
def embed_dataset(
    stylizer: Stylizer, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> torch.Tensor:
    """Style vectors of every image of ``dataset``, ``batch_size`` at a time -> float32 ``[N, D]`` on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    out = torch.empty(len(dataset), stylizer.style_dim, dtype=torch.float32)
    start = 0
    for images, _ in loader:
        x = images.to(device, non_blocking=True).float().div_(255.0)
        out[start : start + len(images)] = stylizer.embed_style(x).float().cpu()
        start += len(images)
    return out


def _images_checksum(styles_dir: Path, fmt: str) -> str:
    """The file that fixes which pixels were embedded: the array itself, or an image folder's index."""
    if fmt == "array":
        return sha256sum(array_paths(styles_dir, STYLE_SPLIT)[0])
    return sha256sum(styles_dir / f"{STYLE_SPLIT}_index.csv")


def compute_style_features(
    styles_dir: str | os.PathLike,
    stylizer_weights: str | None,
    config: StylizerConfig,
    batch_size: int = 64,
    device: str = "auto",
    max_images: int | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Embed the style set (or its ``max_images`` subset); returns the dict that :func:`main` saves."""
    styles_dir = Path(styles_dir)
    styles = open_style_set(styles_dir, config.resolved_style_input_size)  # validate before building the model
    fmt = styles.format
    total = len(styles)
    indices = style_subset(total, max_images)
    dataset: Dataset = styles if indices is None else Subset(styles, indices.tolist())
    if stylizer_weights not in (None, "random") and not Path(stylizer_weights).is_file():
        raise DataError(f"stylizer weights {stylizer_weights} not found (use 'random' for the mini scale)")
    dev = resolve_device(device)
    weights = None if stylizer_weights in (None, "random") else stylizer_weights
    stylizer = load_stylizer(weights, config).to(dev)
    # Arrays are memory-mapped: reading them in the main process beats pickling to workers.
    workers = num_workers if fmt == "imagefolder" else 0
    start = time.perf_counter()
    embeddings = embed_dataset(stylizer, dataset, batch_size, dev, workers)
    elapsed = time.perf_counter() - start
    logger.info(
        "embedded %d of %d style images (%s) in %.2f s (%.1f images/s on %s, %d loader workers)",
        len(embeddings), total, fmt, elapsed, len(embeddings) / max(elapsed, 1e-9), dev, workers,
    )  # fmt: skip
    if not torch.isfinite(embeddings).all():
        raise FloatingPointError(f"non-finite style embeddings for {styles_dir}")
    return {
        "embeddings": embeddings.to(torch.float16),  # halves the file; 100-d vectors need no more
        "source": str(styles_dir),
        "format": fmt,
        "count": int(embeddings.shape[0]),
        "total_images": total,
        "indices": None if indices is None else torch.from_numpy(indices.astype(np.int64)),
        "subset_seed": SUBSET_SEED,
        "decode_size": styles.image_size if fmt == "imagefolder" else None,
        "stylizer": str(stylizer_weights or "random"),
        "stylizer_config": config.to_dict(),
        "sha256_of_images": _images_checksum(styles_dir, fmt),
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the ``style_features`` rule."""
    p = argparse.ArgumentParser(prog="python -m sslaug.augment.style_features", description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", required=True, help="prepared style set directory (array or imagefolder format)")
    p.add_argument("--stylizer", required=True, help="stylizer state dict (.pt) or 'random'")
    p.add_argument("--config", default="", help="StylizerConfig as a JSON file or inline JSON")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=0, help="embed a seeded subset of at most N images (0 = all)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding an image folder (0: in-process)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", required=True, help="output features .pt")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rule; data errors print one line naming the path and return 2 (nothing written)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:  # the rule's thread budget: oversubscribed OpenMP threads crawl
        torch.set_num_threads(args.threads)
    try:
        features = compute_style_features(
            args.styles,
            args.stylizer,
            parse_config(args.config),
            args.batch_size,
            args.device,
            max_images=args.max_images,
            num_workers=args.workers,
        )
    except DataError as err:
        print(f"style_features: error: {err}; nothing written to {args.out}", file=sys.stderr)
        return 2
    atomic_torch_save(features, args.out)
    logger.info("wrote %s: %d embeddings", args.out, features["count"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

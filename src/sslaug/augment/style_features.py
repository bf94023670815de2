"""Precompute SASSL's external style representations (rule entry point).

SASSL's *external* stylization "pre-computes representations of an arbitrary style
dataset and samples from them during pre-training" (000_88efd4324cd49182.txt, Sec. 4).
This module embeds every image of a prepared array-format style set (split ``train``)
once with the stylizer's style predictor and stores the 100-d vectors::

    python -m sslaug.augment.style_features --styles DIR --stylizer WEIGHTS|random \\
        --config '{"tiny": true}' --batch-size 64 --out features.pt

Output (``torch.save``, written atomically)::

    {"embeddings": float16 [N, 100], "source": DIR, "count": N,
     "stylizer": WEIGHTS or "random", "stylizer_config": {...},
     "sha256_of_images": sha256 of DIR/train_images.npy}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sslaug.augment.stylizer import Stylizer, StylizerConfig, load_stylizer
from sslaug.data.formats import DataError, array_paths, load_array_split, read_meta
from sslaug.io import atomic_torch_save, sha256sum

logger = logging.getLogger(__name__)

STYLE_SPLIT = "train"


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


def load_style_images(styles_dir: str | os.PathLike) -> np.ndarray:
    """The style images (uint8 NHWC, memory-mapped) of an array-format set; empty -> error."""
    styles_dir = Path(styles_dir)
    meta = read_meta(styles_dir)
    if meta.get("format") != "array":
        raise StyleSetError(f"style set {styles_dir}: format {meta.get('format')!r}, expected 'array'")
    if int(meta.get("splits", {}).get(STYLE_SPLIT, 0)) == 0:
        raise StyleSetError(f"style set {styles_dir} is empty: split {STYLE_SPLIT!r} has no images")
    images, _ = load_array_split(styles_dir, STYLE_SPLIT)
    if images.shape[0] == 0:  # meta and arrays disagree: trust the arrays
        raise StyleSetError(f"style set {styles_dir} is empty: {array_paths(styles_dir, STYLE_SPLIT)[0]} has 0 images")
    return images


@torch.inference_mode()
def embed_images(stylizer: Stylizer, images: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
    """Style vectors of uint8 NHWC ``images``, ``batch_size`` at a time -> float32 ``[N, D]`` on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    out = torch.empty(images.shape[0], stylizer.style_dim, dtype=torch.float32)
    for start in range(0, images.shape[0], batch_size):
        # np.array copies the slice out of the read-only memmap.
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))
        x = batch.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        out[start : start + len(batch)] = stylizer.embed_style(x).float().cpu()
    return out


def compute_style_features(
    styles_dir: str | os.PathLike,
    stylizer_weights: str | None,
    config: StylizerConfig,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Embed the whole style set; returns the dict that :func:`main` saves."""
    images = load_style_images(styles_dir)  # validate before building the (large) model
    if stylizer_weights not in (None, "random") and not Path(stylizer_weights).is_file():
        raise DataError(f"stylizer weights {stylizer_weights} not found (use 'random' for the mini scale)")
    dev = resolve_device(device)
    weights = None if stylizer_weights in (None, "random") else stylizer_weights
    stylizer = load_stylizer(weights, config).to(dev)
    start = time.perf_counter()
    embeddings = embed_images(stylizer, images, batch_size, dev)
    elapsed = time.perf_counter() - start
    logger.info(
        "embedded %d style images in %.2f s (%.1f images/s on %s)",
        len(embeddings), elapsed, len(embeddings) / max(elapsed, 1e-9), dev,
    )  # fmt: skip
    if not torch.isfinite(embeddings).all():
        raise FloatingPointError(f"non-finite style embeddings for {styles_dir}")
    return {
        "embeddings": embeddings.to(torch.float16),  # halves the file; 100-d vectors need no more
        "source": str(styles_dir),
        "count": int(embeddings.shape[0]),
        "stylizer": str(stylizer_weights or "random"),
        "stylizer_config": config.to_dict(),
        "sha256_of_images": sha256sum(array_paths(Path(styles_dir), STYLE_SPLIT)[0]),
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the ``style_features`` rule."""
    p = argparse.ArgumentParser(prog="python -m sslaug.augment.style_features", description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", required=True, help="prepared array-format style set directory")
    p.add_argument("--stylizer", required=True, help="stylizer state dict (.pt) or 'random'")
    p.add_argument("--config", default="", help="StylizerConfig as a JSON file or inline JSON")
    p.add_argument("--batch-size", type=int, default=64)
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
            args.styles, args.stylizer, parse_config(args.config), args.batch_size, args.device
        )
    except DataError as err:
        print(f"style_features: error: {err}; nothing written to {args.out}", file=sys.stderr)
        return 2
    atomic_torch_save(features, args.out)
    logger.info("wrote %s: %d embeddings", args.out, features["count"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Representation dissimilarity of two encoders: linear CKA and orthogonal Procrustes distance (rule entry point).

002_a484f64d5b0479a0.txt, RQ3 and Table 2: features of two encoders on the same images
(ImageNet val), each feature matrix centred over the examples and divided by its
Frobenius norm ("per standard practice"), then

* ``d_CKA = 1 - ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (linear CKA, Kornblith et al. 2019;
  the paper writes the same with A = X^T in R^{p x N}: ``1 - ||A B^T||^2 / (||A A^T|| ||B B^T||)``),
* ``d_OPD = min_{R^T R = I} ||Y - X R||_F^2 = ||X||_F^2 + ||Y||_F^2 - 2 ||X^T Y||_*`` (Ding et
  al. 2021; = ``2 - 2 ||X^T Y||_*`` after normalisation, in [0, 2]; for p != q the smaller
  matrix is zero-padded, which leaves the nuclear norm unchanged),

reported as "the mean and 95% bootstrap confidence intervals over 100 runs": each run
resamples the N examples with replacement; the table shows the mean over runs and the
percentile interval's half-width. Features are compared in float64 (CKA of nearly
identical spaces loses digits in float32)::

    python -m sslaug.evaluate.similarity --encoder A/encoder.pt --encoder-b B/encoder.pt|clip \\
        --data D --test-split test --spec JSON --seed 0 --out metrics.json

``--encoder-b clip`` is the CLIP image encoder that conditions the unCLIP generator:
``CLIPVisionModelWithProjection`` (its ``image_embeds``) from ``clip_model`` in the spec, an
HF id or local path, or ``tiny-random`` (mini: the tiny unCLIP pipeline's own random-weight
encoder, built by :func:`sslaug.augment.generative_views.build_tiny_clip_image_encoder`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sslaug.augment.views import normalize_uint8
from sslaug.data.formats import EVAL_CROP_RATIO, open_classification
from sslaug.evaluate.common import USER_ERRORS, check_encoder_path, eval_argument_parser, pick_device, write_result
from sslaug.settings import apply_overrides

#: ``--encoder-b`` value that selects the CLIP image encoder instead of an encoder.pt.
CLIP = "clip"
TINY_RANDOM = "tiny-random"
#: The tiny unCLIP pipeline of the mini scale is built with seed 0 (generative_views' default).
TINY_CLIP_SEED = 0

Array = torch.Tensor | np.ndarray


@dataclass
class SimilarityConfig:
    """CKA / OPD settings; defaults are the paper's (100 bootstrap runs, 95% intervals)."""

    bootstrap_runs: int = 100
    confidence: float = 0.95
    batch_size: int = 256
    num_workers: int = 0
    #: CLIP image encoder for ``--encoder-b clip``: an HF id or path, or ``tiny-random``.
    clip_model: str = "openai/clip-vit-large-patch14"
    #: Subfolder inside ``clip_model`` (e.g. ``image_encoder`` of an unCLIP checkpoint; processor
    #: from ``feature_extractor`` beside it); empty for a plain CLIP checkpoint.
    clip_subfolder: str = ""
    #: Use only the first N examples of the split (0: all of them).
    max_examples: int = 0

    def validate(self) -> None:
        if self.bootstrap_runs < 1:
            raise ValueError(f"spec key 'bootstrap_runs' must be >= 1, got {self.bootstrap_runs}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"spec key 'confidence' must be in (0, 1), got {self.confidence}")
        if self.batch_size < 1 or self.max_examples < 0 or self.num_workers < 0:
            raise ValueError("spec keys 'batch_size' (>= 1), 'max_examples' and 'num_workers' (>= 0) out of range")


# --------------------------------------------------------------------------- the measures


def center_and_normalize(features: Array, name: str = "features") -> torch.Tensor:
    """``[N, p]`` features -> float64, each feature centred over the examples, Frobenius norm 1.

    Raises:
        ValueError: for fewer than 2 examples or constant features (no direction to compare).
    """
    x = torch.as_tensor(features).double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected an [examples, features] matrix with >= 2 examples, got {tuple(x.shape)}")
    x = x - x.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(x)
    if not torch.isfinite(norm) or norm <= 0:
        raise ValueError(f"{name}: features are constant (or not finite) over the examples; CKA/OPD undefined")
    return x / norm


def _cka_and_opd(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear CKA similarity, Procrustes distance) of already centred, normalised matrices."""
    cross = x.T @ y  # [p, q]: cheaper than the [N, N] Gram matrices for N >> p, q
    cka = torch.linalg.matrix_norm(cross) ** 2 / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))
    nuclear = torch.linalg.matrix_norm(cross, ord="nuc")
    opd = (x.square().sum() + y.square().sum() - 2 * nuclear).clamp_min(0.0)  # rounding can dip below 0
    return cka, opd


def linear_cka(x: Array, y: Array) -> float:
    """Linear CKA similarity (Kornblith et al. 2019) of ``[N, p]`` and ``[N, q]`` features, in [0, 1]."""
    cka, _ = _cka_and_opd(center_and_normalize(x, "x"), center_and_normalize(y, "y"))
    return float(cka)


def cka_dissimilarity(x: Array, y: Array) -> float:
    """``d_CKA = 1 - CKA``, the dissimilarity 002 Table 2 reports."""
    return 1.0 - linear_cka(x, y)


def orthogonal_procrustes_distance(x: Array, y: Array) -> float:
    """Orthogonal Procrustes distance (Ding et al. 2021) of centred, Frobenius-normalised features, in [0, 2]."""
    _, opd = _cka_and_opd(center_and_normalize(x, "x"), center_and_normalize(y, "y"))
    return float(opd)


@dataclass(frozen=True)
class BootstrapEstimate:
    """A statistic over bootstrap resamples: mean, percentile interval, and the full-sample value."""

    mean: float
    low: float
    high: float
    full: float
    runs: int
    confidence: float

    @property
    def half_width(self) -> float:
        """Half the interval's width: the "±" of the paper's table."""
        return (self.high - self.low) / 2


def bootstrap_dissimilarities(
    x: Array, y: Array, runs: int = 100, confidence: float = 0.95, seed: int = 0
) -> dict[str, BootstrapEstimate]:
    """``{"cka": d_CKA, "opd": d_OPD}`` over ``runs`` resamples of the examples (with replacement).

    Each resample is centred and normalised anew, as the measure defines it for a data set.
    """
    x_all = torch.as_tensor(x).double()
    y_all = torch.as_tensor(y).double()
    if x_all.shape[0] != y_all.shape[0]:
        raise ValueError(f"the two encoders saw different example counts: {x_all.shape[0]} vs {y_all.shape[0]}")
    n = x_all.shape[0]
    generator = torch.Generator().manual_seed(seed)
    full_cka, full_opd = _cka_and_opd(
        center_and_normalize(x_all, "encoder a"), center_and_normalize(y_all, "encoder b")
    )
    samples = torch.empty(runs, 2, dtype=torch.float64)
    for r in range(runs):
        idx = torch.randint(n, (n,), generator=generator).to(x_all.device)
        cka, opd = _cka_and_opd(
            center_and_normalize(x_all[idx], "encoder a"), center_and_normalize(y_all[idx], "encoder b")
        )
        samples[r, 0], samples[r, 1] = 1.0 - cka.item(), opd.item()
    alpha = (1.0 - confidence) / 2
    quantiles = torch.quantile(samples, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64), dim=0)
    full = {"cka": 1.0 - full_cka.item(), "opd": full_opd.item()}
    return {
        name: BootstrapEstimate(
            mean=samples[:, i].mean().item(),
            low=quantiles[0, i].item(),
            high=quantiles[1, i].item(),
            full=full[name],
            runs=runs,
            confidence=confidence,
        )
        for i, name in enumerate(("cka", "opd"))
    }


# --------------------------------------------------------------------------- encoders

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def ssl_encoder(path: str | Path, device: torch.device) -> tuple[FeatureFn, dict[str, Any]]:
    """A pretrained encoder.pt as ``uint8 NCHW batch -> [n, p] features`` (the eval-time transform, no augmentation)."""
    from sslaug.models.backbones import load_encoder

    model, meta = load_encoder(check_encoder_path(path), map_location=device)
    model.to(device).eval()

    def features(batch: torch.Tensor) -> torch.Tensor:
        return model(normalize_uint8(batch.to(device))).float()

    return features, {"kind": "pretrained", "path": str(path), "backbone": meta.get("backbone"),
                      "image_size": meta.get("image_size")}  # fmt: skip


def load_clip_image_encoder(model: str, subfolder: str = "") -> tuple[Any, Any]:
    """``(CLIPVisionModelWithProjection, CLIPImageProcessor)`` from an HF id / local path, or the tiny random one."""
    if model == TINY_RANDOM:
        from sslaug.augment.generative_views import build_tiny_clip_image_encoder

        return build_tiny_clip_image_encoder(TINY_CLIP_SEED)
    if not Path(model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"CLIP model {model!r} not found locally (HF_HUB_OFFLINE=1): set evaluations.cka_opd.clip_model "
            "in the scale config to a local copy"
        )
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(model, subfolder=subfolder)
    # An unCLIP checkpoint keeps the processor in feature_extractor/, beside image_encoder/.
    processor_folder = "feature_extractor" if subfolder else ""
    processor = CLIPImageProcessor.from_pretrained(model, subfolder=processor_folder)
    return encoder, processor


def clip_encoder(config: SimilarityConfig, device: torch.device) -> tuple[FeatureFn, dict[str, Any]]:
    """The CLIP image encoder as ``uint8 NCHW batch -> image_embeds`` (CLIP's own resize, crop and normalisation)."""
    model, processor = load_clip_image_encoder(config.clip_model, config.clip_subfolder)
    model.to(device).eval()

    def features(batch: torch.Tensor) -> torch.Tensor:
        pixels = processor(images=list(batch.permute(0, 2, 3, 1).numpy()), return_tensors="pt").pixel_values
        return model(pixel_values=pixels.to(device)).image_embeds.float()

    return features, {"kind": "clip", "model": config.clip_model, "subfolder": config.clip_subfolder,
                      "projection_dim": int(model.config.projection_dim)}  # fmt: skip


@torch.no_grad()
def paired_features(
    dataset: Any, encoders: Sequence[FeatureFn], batch_size: int, num_workers: int = 0, max_examples: int = 0
) -> list[torch.Tensor]:
    """Features of every encoder on the same images, in dataset order (one pass over the data)."""
    if max_examples:
        dataset = torch.utils.data.Subset(dataset, range(min(max_examples, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks: list[list[torch.Tensor]] = [[] for _ in encoders]
    for images, _ in loader:
        for out, encode in zip(chunks, encoders):
            out.append(encode(images).cpu())
    if not chunks[0]:
        raise ValueError("the evaluation split has no images")
    return [torch.cat(c) for c in chunks]


# --------------------------------------------------------------------------- entry point


def run_similarity(
    encoder: str | Path, encoder_b: str | Path, data: str | Path, split: str, spec: Any, seed: int, out: str | Path
) -> dict[str, Any]:
    """CKA / OPD dissimilarity of ``encoder`` and ``encoder_b`` (a path or ``clip``) on ``data``'s ``split``."""
    start = time.time()
    config = apply_overrides(SimilarityConfig, spec)
    device = pick_device()
    features_a, info_a = ssl_encoder(encoder, device)
    features_b, info_b = clip_encoder(config, device) if str(encoder_b) == CLIP else ssl_encoder(encoder_b, device)
    # The pretrained encoders see the split at their pretraining resolution; CLIP resizes on its own.
    # Photos (imagefolder) get the papers' test view: shorter side to 256, centre crop 224.
    dataset = open_classification(data, split, image_size=info_a.get("image_size"), crop_ratio=EVAL_CROP_RATIO)
    feats_a, feats_b = paired_features(dataset, [features_a, features_b], config.batch_size, config.num_workers,
                                       config.max_examples)  # fmt: skip
    estimates = bootstrap_dissimilarities(feats_a.to(device), feats_b.to(device), config.bootstrap_runs,
                                          config.confidence, seed)  # fmt: skip
    metrics: dict[str, float] = {}
    for name, est in estimates.items():
        metrics |= {name: est.mean, f"{name}_ci95": est.half_width, f"{name}_ci_low": est.low,
                    f"{name}_ci_high": est.high, f"{name}_full": est.full}  # fmt: skip
    notes = [
        (
            "cka and opd are dissimilarities (1 - linear CKA; orthogonal Procrustes distance), the mean over "
            f"{config.bootstrap_runs} bootstrap resamples of the examples; *_ci95 is the half-width of the "
            f"{config.confidence:.0%} percentile interval, *_full the value on all examples"
        ),
    ]
    info = {
        "split": split,
        "examples": int(feats_a.shape[0]),
        "dims": [int(feats_a.shape[1]), int(feats_b.shape[1])],
        "encoder_a": info_a,
        "encoder_b": info_b,
        "device": str(device),
        "bootstrap_seed": seed,
    }
    return write_result(out, "cka_opd", metrics, config, time.time() - start, notes, info, encoder=encoder, data=data)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of the ``representation_similarity`` rule; bad input -> one line naming it, exit 1."""
    parser: argparse.ArgumentParser = eval_argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--encoder-b", required=True, help=f"second encoder.pt, or {CLIP!r} (the CLIP image encoder)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run_similarity(
            args.encoder, args.encoder_b, args.data, args.test_split, args.spec, args.seed, args.out
        )
    except USER_ERRORS as e:
        print(f"cka_opd: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

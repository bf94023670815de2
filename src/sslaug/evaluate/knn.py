"""Weighted kNN classifier on frozen features (rule entry point).

Wu et al. 2018 / DINO protocol: cosine similarity, the k nearest training features vote
with weight exp(sim / T). Features of array sets come from the images in memory; image
folders stream through :func:`sslaug.evaluate.common.split_features` (resize 256, centre
crop 224), so only the ``N x D`` feature matrix is held (ImageNet: 10.5 GB in float32).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sslaug.data.formats import read_meta
from sslaug.evaluate.common import (
    check_encoder_path,
    check_feature_dtype,
    cli_main,
    open_eval_split,
    pick_device,
    split_features,
    split_labels,
    topk_accuracy,
    write_result,
)
from sslaug.evaluate.linear import probe_image_size
from sslaug.models.backbones import load_encoder
from sslaug.settings import apply_overrides


@dataclass
class KNNConfig:
    """k = 200 and T = 0.07 as in Wu et al. 2018 (also DINO's 200-NN setting).

    ``image_size`` (None: the encoder's pretraining size), ``num_workers`` and ``feature_dtype``
    (float16 halves the stored features) apply to image-folder datasets, as in the linear probe.
    """

    k: int = 200
    temperature: float = 0.07
    chunk_size: int = 1024
    image_size: int | None = None
    num_workers: int = 4
    feature_dtype: str = "float32"

    def __post_init__(self) -> None:
        check_feature_dtype(self.feature_dtype)


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    config: KNNConfig,
) -> torch.Tensor:
    """Class scores ``[N_test, C]`` from weighted votes of the k nearest training features."""
    # .float(): float16-stored features are compared in float32 (a no-op for float32 ones).
    train_feats = F.normalize(train_feats.float(), dim=1)
    test_feats = F.normalize(test_feats.float(), dim=1)
    k = min(config.k, train_feats.shape[0])
    scores = []
    for start in range(0, test_feats.shape[0], config.chunk_size):
        sim = test_feats[start : start + config.chunk_size] @ train_feats.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / config.temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def run_knn(
    encoder: str | Path, data: str | Path, train_split: str, test_split: str, spec: Any, seed: int, out: str | Path
) -> dict[str, Any]:
    """kNN classification with ``encoder``'s frozen features on ``data``; writes ``out`` atomically."""
    start = time.time()
    config = apply_overrides(KNNConfig, spec)
    meta = read_meta(data)
    device = pick_device()
    model, encoder_meta = load_encoder(check_encoder_path(encoder), map_location=device)
    size = probe_image_size(config.image_size, encoder_meta)
    dtype = check_feature_dtype(config.feature_dtype)
    train = open_eval_split(data, train_split, size, config.num_workers)
    test = open_eval_split(data, test_split, size, config.num_workers)
    train_feats = split_features(model, train, device, dtype)
    test_feats = split_features(model, test, device, dtype)
    scores = knn_predict(train_feats, split_labels(train), test_feats, int(meta["num_classes"]), config)
    metrics = topk_accuracy(scores, split_labels(test))
    return write_result(out, "knn", metrics, config, time.time() - start, encoder=encoder, data=data)


def main(argv: list[str] | None = None) -> int:
    return cli_main("knn", "Weighted kNN on frozen features.", run_knn, argv, test_split="test")


if __name__ == "__main__":
    raise SystemExit(main())

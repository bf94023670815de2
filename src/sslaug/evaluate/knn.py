"""Weighted kNN classifier on frozen features (rule entry point).

Wu et al. 2018 / DINO protocol: cosine similarity, the k nearest training features vote
with weight exp(sim / T).
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
    cli_main,
    extract_features,
    pick_device,
    topk_accuracy,
    write_result,
)
from sslaug.evaluate.linear import labelled_split
from sslaug.models.backbones import load_encoder
from sslaug.settings import apply_overrides


@dataclass
class KNNConfig:
    """k = 200 and T = 0.07 as in Wu et al. 2018 (also DINO's 200-NN setting)."""

    k: int = 200
    temperature: float = 0.07
    chunk_size: int = 1024


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    config: KNNConfig,
) -> torch.Tensor:
    """Class scores ``[N_test, C]`` from weighted votes of the k nearest training features."""
    train_feats = F.normalize(train_feats, dim=1)
    test_feats = F.normalize(test_feats, dim=1)
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
    if meta["format"] != "array":
        raise NotImplementedError(f"kNN on {meta['format']!r} datasets lands with the datasets issue (#6)")
    device = pick_device()
    model, _ = load_encoder(check_encoder_path(encoder), map_location=device)
    train_x, train_y = labelled_split(data, train_split)
    test_x, test_y = labelled_split(data, test_split)
    train_feats = extract_features(model, train_x, device)
    test_feats = extract_features(model, test_x, device)
    scores = knn_predict(train_feats, train_y, test_feats, int(meta["num_classes"]), config)
    metrics = topk_accuracy(scores, test_y)
    return write_result(out, "knn", metrics, config, time.time() - start, encoder=encoder, data=data)


def main(argv: list[str] | None = None) -> int:
    return cli_main("knn", "Weighted kNN on frozen features.", run_knn, argv, test_split="test")


if __name__ == "__main__":
    raise SystemExit(main())

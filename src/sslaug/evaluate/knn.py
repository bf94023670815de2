"""Weighted kNN classifier on frozen features (rule entry point).

Wu et al. 2018 / DINO protocol: cosine similarity, the k nearest training features vote
with weight exp(sim / T).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslaug.data.formats import load_array_split, read_meta
from sslaug.evaluate.common import device_for_eval, extract_features, run_evaluation, topk_accuracy
from sslaug.evaluate.linear import _labelled
from sslaug.models.backbones import load_encoder


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


def evaluate(args: argparse.Namespace, config: KNNConfig) -> dict[str, float]:
    meta = read_meta(args.data)
    if meta["format"] != "array":
        raise NotImplementedError(f"kNN on {meta['format']!r} datasets lands with the datasets issue")
    device = device_for_eval()
    encoder, _ = load_encoder(args.encoder, map_location=device)
    train_x, train_y = _labelled(*load_array_split(args.data, args.train_split))
    test_x, test_y = _labelled(*load_array_split(args.data, args.test_split))
    train_feats = extract_features(encoder, train_x, device)
    test_feats = extract_features(encoder, test_x, device)
    scores = knn_predict(train_feats, train_y, test_feats, int(meta["num_classes"]), config)
    return topk_accuracy(scores, test_y)


def main(argv: list[str] | None = None) -> int:
    return run_evaluation("knn", __doc__ or "", KNNConfig, evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())

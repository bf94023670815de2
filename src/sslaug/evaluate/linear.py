"""Linear probe on frozen features (rule entry point).

    python -m sslaug.evaluate.linear --encoder E --data D --spec JSON --out metrics.json

Two modes. ``augment: false`` (mini, cifar): features are extracted once and a linear
classifier is trained on them, standardised (mean/std of the train features) so that
one learning rate works across backbones. ``augment: true`` (the papers' protocol):
every epoch passes random-resized-crop + flip batches through the frozen encoder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslaug.augment.views import normalize_uint8
from sslaug.data.formats import load_array_split, read_meta
from sslaug.evaluate.common import (
    check_encoder_path,
    cli_main,
    extract_features,
    pick_device,
    topk_accuracy,
    write_result,
)
from sslaug.models.backbones import load_encoder
from sslaug.settings import apply_overrides


@dataclass
class LinearConfig:
    """Linear-probe settings; defaults are MoCo's protocol (He et al. 2020): SGD lr 30, 100 epochs."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: bool = True
    standardize: bool = False
    #: "sgd": the papers' trained softmax classifier; "ridge": closed-form ridge regression
    #: onto one-hot labels of standardised features (the mini scale: no optimiser start-up,
    #: which costs more than the whole probe on 800 images).
    solver: str = "sgd"
    ridge_lambda: float = 1.0


def labelled_split(data: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and labels of an array split, unlabelled (-1) images dropped."""
    images, labels = load_array_split(data, split)
    keep = labels >= 0
    x = torch.from_numpy(np.ascontiguousarray(images[keep])).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(labels[keep]).long()


def ridge_probe(
    train_feats: torch.Tensor, train_y: torch.Tensor, test_feats: torch.Tensor, num_classes: int, lam: float
) -> torch.Tensor:
    """Class scores of a ridge-regression classifier: W = (X^T X + lam I)^-1 X^T Y on standardised X."""
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    x = torch.cat([(train_feats - mean) / std, torch.ones(len(train_feats), 1)], dim=1).double()
    y = torch.nn.functional.one_hot(train_y, num_classes).double()
    gram = x.T @ x + lam * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, x.T @ y)
    test_x = torch.cat([(test_feats - mean) / std, torch.ones(len(test_feats), 1)], dim=1).double()
    return (test_x @ weights).float()


def train_linear(
    encoder: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    config: LinearConfig,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """Train a linear classifier on the frozen encoder; top-1/top-5 on ``test`` in percent."""
    torch.manual_seed(seed)
    train_x, train_y = train
    test_feats = extract_features(encoder, test[0], device)
    if config.solver == "ridge":
        return topk_accuracy(
            ridge_probe(
                extract_features(encoder, train_x, device), train_y, test_feats, num_classes, config.ridge_lambda
            ),
            test[1],
        )
    if config.solver != "sgd":
        raise ValueError(f"linear probe solver must be 'sgd' or 'ridge', not {config.solver!r}")
    if config.augment:
        crop = nn.Sequential(
            K.RandomResizedCrop(tuple(train_x.shape[-2:]), scale=(0.08, 1.0)), K.RandomHorizontalFlip()
        ).to(device)
        train_feats = None
    else:
        train_feats = extract_features(encoder, train_x, device)
    mean = torch.zeros(encoder.feature_dim)
    std = torch.ones(encoder.feature_dim)
    if config.standardize and train_feats is not None:
        mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    classifier = nn.Linear(encoder.feature_dim, num_classes).to(device)
    optimizer = torch.optim.SGD(
        classifier.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(train_y.shape[0] / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * steps_per_epoch)
    mean, std = mean.to(device), std.to(device)
    for _ in range(config.epochs):
        order = torch.randperm(train_y.shape[0])
        for start in range(0, order.shape[0], config.batch_size):
            idx = order[start : start + config.batch_size]
            if train_feats is None:
                with torch.no_grad():
                    views = crop(train_x[idx].to(device).float() / 255) * 255
                    feats = encoder(normalize_uint8(views)).float()
            else:
                feats = train_feats[idx].to(device)
            loss = F.cross_entropy(classifier((feats - mean) / std), train_y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        logits = classifier((test_feats.to(device) - mean) / std).cpu()
    return topk_accuracy(logits, test[1])


def run_linear(
    encoder: str | Path, data: str | Path, train_split: str, test_split: str, spec: Any, seed: int, out: str | Path
) -> dict[str, Any]:
    """Linear probe of ``encoder`` on ``data``; writes ``out`` atomically."""
    start = time.time()
    config = apply_overrides(LinearConfig, spec)
    meta = read_meta(data)
    if meta["format"] != "array":
        raise NotImplementedError(f"linear probe on {meta['format']!r} datasets lands with the datasets issue (#6)")
    device = pick_device()
    model, _ = load_encoder(check_encoder_path(encoder), map_location=device)
    train = labelled_split(data, train_split)
    test = labelled_split(data, test_split)
    metrics = train_linear(model, train, test, int(meta["num_classes"]), config, device, seed)
    return write_result(out, "linear", metrics, config, time.time() - start, encoder=encoder, data=data)


def main(argv: list[str] | None = None) -> int:
    return cli_main("linear", "Linear probe on a frozen pretrained encoder.", run_linear, argv, test_split="test")


if __name__ == "__main__":
    raise SystemExit(main())

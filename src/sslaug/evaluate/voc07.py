"""VOC07 classification: linear SVMs on frozen features, mean average precision.

The protocol of PIRL, MoCo and CLSA (004_fbcf473626e2cd99.txt, Table 3, "VOC07"): one
linear SVM per class on the frozen, L2-normalised encoder features of VOC07 trainval,
mAP on VOC07 test. PIRL/MoCo pick the SVM cost by cross-validation over a grid; this
takes the cost grid as ``costs`` and picks it by 3-fold cross-validated mAP (sklearn).
Works on a multi-label COCO-format set (an image has class c if any box of c does) and,
at the mini scale, on a single-label array set (one-hot labels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslaug.data.formats import open_coco, read_meta
from sslaug.evaluate.common import (
    check_encoder_path,
    cli_main,
    extract_features,
    pick_device,
    write_result,
)
from sslaug.evaluate.linear import labelled_split
from sslaug.models.backbones import load_encoder
from sslaug.settings import apply_overrides


@dataclass
class VOC07Config:
    """``costs``: SVM cost grid (PIRL's grid, thinned); ``image_size`` for COCO-format images."""

    costs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    image_size: int = 224
    folds: int = 3


def multilabel_split(data: Path, split: str, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 NCHW images and multi-hot labels ``[N, C]`` of a COCO-format or array split."""
    meta = read_meta(data)
    if meta["format"] == "array":
        images, labels = labelled_split(data, split)
        return images, F.one_hot(labels, int(meta["num_classes"])).numpy()
    if meta["format"] != "coco":
        raise NotImplementedError(f"voc07_cls reads coco or array datasets, not {meta['format']!r} ({data})")
    dataset, _ = open_coco(data, split)
    class_ids = sorted(int(c["id"]) for c in meta["categories"])
    column = {cid: i for i, cid in enumerate(class_ids)}
    images, labels = [], np.zeros((len(dataset), len(class_ids)), dtype=np.int64)
    for n in range(len(dataset)):
        image, target = dataset[n]
        resized = F.interpolate(image[None], size=(image_size, image_size), mode="bilinear", antialias=True)
        images.append((resized[0] * 255).round().to(torch.uint8))
        for label in target["labels"].tolist():
            labels[n, column[int(label)]] = 1
    return torch.stack(images), labels


def svm_map(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, config: VOC07Config) -> float:
    """mAP (percent) of one-vs-rest linear SVMs, cost chosen by cross-validated mAP."""
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import GridSearchCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    search = GridSearchCV(
        OneVsRestClassifier(LinearSVC(dual="auto", max_iter=5000)),
        {"estimator__C": list(config.costs)},
        scoring="average_precision",
        cv=config.folds,
    )
    search.fit(train_x, train_y)
    scores = search.decision_function(test_x)
    present = test_y.sum(axis=0) > 0  # classes absent from the test set have no AP
    return 100.0 * float(average_precision_score(test_y[:, present], scores[:, present], average="macro"))


def run_voc07(
    encoder: str | Path, data: str | Path, train_split: str, test_split: str, spec: Any, seed: int, out: str | Path
) -> dict[str, Any]:
    """VOC07 classification mAP of ``encoder``'s frozen features; writes ``out`` atomically."""
    start = time.time()
    config = apply_overrides(VOC07Config, spec)
    device = pick_device()
    model, _ = load_encoder(check_encoder_path(encoder), map_location=device)
    train_x, train_y = multilabel_split(Path(data), train_split, config.image_size)
    test_x, test_y = multilabel_split(Path(data), test_split, config.image_size)
    train_f = F.normalize(extract_features(model, train_x, device), dim=1).numpy()
    test_f = F.normalize(extract_features(model, test_x, device), dim=1).numpy()
    metrics = {"map": svm_map(train_f, train_y, test_f, test_y, config)}
    return write_result(out, "voc07_cls", metrics, config, time.time() - start, encoder=encoder, data=data)


def main(argv: list[str] | None = None) -> int:
    return cli_main("voc07_cls", "VOC07 classification with linear SVMs (mAP).", run_voc07, argv, test_split="test")


if __name__ == "__main__":
    raise SystemExit(main())

"""VOC07 classification: one linear classifier per class on frozen features, mean average precision.

Default (``classifier: svm``): the protocol of PIRL, MoCo and CLSA (004_fbcf473626e2cd99.txt,
Table 3, "VOC07"): one linear SVM per class on the frozen, L2-normalised encoder features
of VOC07 trainval, mAP on VOC07 test. PIRL/MoCo pick the SVM cost by cross-validation over
a grid; this takes the cost grid as ``costs`` and picks it by 3-fold cross-validated mAP
(sklearn).

``classifier: logistic`` with ``ap: 11point``: SimCLR's transfer protocol (Kornblith et al.
2019), which Rescue Table 1 (001) follows: an L2-regularised logistic regression per class
(L-BFGS), the penalty lambda from ``logistic_lambdas`` (start, stop, count: log-spaced; C =
1 / (lambda n)) picked by cross-validated mAP, and VOC2007's 11-point interpolated mAP.
``classifier: sgd``: CLSA's VOC07 protocol (004 Sec. 4.1, "in the similar way for ImageNet"):
one linear layer on the frozen features trained for 100 epochs with SGD lr 0.05, momentum 0.9,
no weight decay, batch 256 and no lr schedule. The loss is not stated; ours is the multi-label
binary cross-entropy (one sigmoid per class), on the raw (unnormalised) features as for ImageNet.

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
    """``costs``: cost grid (PIRL's SVM grid, thinned); ``image_size`` for COCO-format images; the rest: module doc."""

    costs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    image_size: int = 224
    folds: int = 3
    classifier: str = "svm"  # svm | logistic | sgd
    ap: str = "all"  # all (every recall step, sklearn) | 11point (VOC2007 devkit)
    logistic_lambdas: tuple[float, ...] | None = None  # (start, stop, count) -> C grid; None: ``costs``
    #: ``classifier: sgd`` (CLSA): the linear layer's optimisation.
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 100
    batch_size: int = 256
    #: Name of the scale's recipe this spec came from (recorded in metrics.json only).
    recipe: str = ""

    def __post_init__(self) -> None:
        if self.classifier not in ("svm", "logistic", "sgd"):
            raise ValueError(f"voc07_cls classifier must be 'svm', 'logistic' or 'sgd', got {self.classifier!r}")
        if self.ap not in ("all", "11point"):
            raise ValueError(f"voc07_cls ap must be 'all' or '11point', got {self.ap!r}")
        if self.logistic_lambdas is not None and len(self.logistic_lambdas) != 3:
            raise ValueError(f"voc07_cls logistic_lambdas must be (start, stop, count), got {self.logistic_lambdas}")

    def cost_grid(self, num_train: int) -> list[float]:
        """Values of scikit-learn's C to search: ``costs``, or 1 / (lambda n) over ``logistic_lambdas``."""
        if self.logistic_lambdas is None:
            return [float(c) for c in self.costs]
        start, stop, count = self.logistic_lambdas
        lambdas = np.logspace(np.log10(start), np.log10(stop), int(count))
        return [float(1.0 / (lam * num_train)) for lam in lambdas]


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


def eleven_point_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """VOC2007's 11-point interpolated AP of one class: mean over recall r in {0, 0.1, ..., 1}
    of the highest precision at recall >= r (0 where none), as the VOC2007 devkit computes it."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall = tp / max(int(hits.sum()), 1)
    precision = tp / np.maximum(tp + fp, 1)
    return float(np.mean([precision[recall >= r].max(initial=0.0) for r in np.linspace(0.0, 1.0, 11)]))


def average_precision(test_y: np.ndarray, scores: np.ndarray, ap: str) -> float:
    """mAP (percent) over the classes present in the test set (``ap``: all | 11point)."""
    from sklearn.metrics import average_precision_score

    present = test_y.sum(axis=0) > 0  # classes absent from the test set have no AP
    if ap == "11point":
        return 100.0 * float(np.mean([eleven_point_ap(test_y[:, c], scores[:, c]) for c in np.flatnonzero(present)]))
    return 100.0 * float(average_precision_score(test_y[:, present], scores[:, present], average="macro"))


def sgd_scores(
    train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, config: VOC07Config, seed: int
) -> np.ndarray:
    """Test scores of one linear layer trained with SGD and multi-label BCE (CLSA's VOC07 protocol)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.from_numpy(train_y).float()
    layer = torch.nn.Linear(train_x.shape[1], targets.shape[1])
    optimizer = torch.optim.SGD(layer.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    for _ in range(config.epochs):
        for batch in torch.randperm(len(train_x), generator=generator).split(config.batch_size):
            loss = F.binary_cross_entropy_with_logits(layer(train_x[batch]), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return layer(test_x).numpy()


def svm_map(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, config: VOC07Config) -> float:
    """mAP (percent) of one-vs-rest linear classifiers (``config.classifier``), cost chosen by cross-validated mAP."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    if config.classifier == "logistic":
        estimator = LogisticRegression(solver="lbfgs", max_iter=1000)
    else:
        estimator = LinearSVC(dual="auto", max_iter=5000)
    search = GridSearchCV(
        OneVsRestClassifier(estimator),
        {"estimator__C": config.cost_grid(len(train_x))},
        scoring="average_precision",
        cv=config.folds,
    )
    search.fit(train_x, train_y)
    return average_precision(test_y, search.decision_function(test_x), config.ap)


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
    train_f, test_f = extract_features(model, train_x, device), extract_features(model, test_x, device)
    if config.classifier == "sgd":
        metrics = {"map": average_precision(test_y, sgd_scores(train_f, train_y, test_f, config, seed), config.ap)}
    else:  # PIRL / Kornblith: L2-normalised features
        train_f, test_f = F.normalize(train_f, dim=1).numpy(), F.normalize(test_f, dim=1).numpy()
        metrics = {"map": svm_map(train_f, train_y, test_f, test_y, config)}
    return write_result(out, "voc07_cls", metrics, config, time.time() - start, encoder=encoder, data=data)


def main(argv: list[str] | None = None) -> int:
    return cli_main("voc07_cls", "VOC07 classification with linear SVMs (mAP).", run_voc07, argv, test_split="test")


if __name__ == "__main__":
    raise SystemExit(main())

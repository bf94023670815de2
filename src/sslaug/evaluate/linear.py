"""Linear probe on frozen features (rule entry point).

    python -m sslaug.evaluate.linear --encoder E --data D --spec JSON --out metrics.json

Each paper states its own protocol; the scale configs name them as recipes
(``evaluations.linear.recipes``, picked per table by the evaluation option ``recipe``) and
this module runs any of them. Three solvers:

- ``sgd``: a softmax classifier trained by SGD or LARS (timm), with cosine, step or
  constant schedules, optional warm-up, and the papers' feature treatments (BatchNorm
  without affine as in MAE, L2 + train-set standardisation as in Mean Shift). With
  ``augment: true`` every epoch passes random-resized-crop + flip batches through the
  frozen encoder; otherwise features are extracted once.
- ``logistic``: the transfer protocol of SimCLR (Kornblith et al. 2019): L2-regularised
  multinomial logistic regression (scikit-learn, L-BFGS) on frozen features without
  augmentation, the regularisation picked on a held-out part of the training split, then
  refit on all of it.
- ``ridge``: closed-form ridge regression onto one-hot labels (the mini scale: no
  optimiser start-up, which costs more than the whole probe on 800 images).

Array datasets (CIFAR-style, mini) sit in memory and are cropped on the device. Image-folder
datasets (ImageNet, iNat, Places365, the transfer sets) are streamed: features through
:func:`sslaug.evaluate.common.split_features` (resize 256, centre crop 224), augmented epochs
through a DataLoader over :class:`sslaug.data.crops.RandomCropViews`, which crops each full
decoded photo (one :class:`~sslaug.data.crops.CropSpec`), the flip following on the device.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sslaug.augment.views import normalize_uint8
from sslaug.data.formats import read_meta
from sslaug.evaluate.common import (
    EvalSplit,
    FolderSplit,
    autocast,
    check_encoder_path,
    check_feature_dtype,
    cli_main,
    labelled_split,  # noqa: F401 - re-exported: voc07 and the tests import it from here
    open_eval_split,
    pick_device,
    split_features,
    split_labels,
    topk_accuracy,
    write_result,
)
from sslaug.models.backbones import load_encoder
from sslaug.settings import apply_overrides

SOLVERS = ("sgd", "logistic", "ridge")
OPTIMIZERS = ("sgd", "lars")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class LinearConfig:
    """Linear-probe settings; defaults are MoCo's protocol (He et al. 2020): SGD lr 30, 100 epochs.

    The scale configs' recipes set these per paper (workflow/schemas/scale.schema.yaml says
    where each value comes from).
    """

    #: Name of the scale's recipe this spec came from (recorded in metrics.json only).
    recipe: str = ""
    solver: str = "sgd"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 30.0
    #: > 0: ``lr`` is per this many images and scales linearly, lr * batch_size / base_batch_size.
    base_batch_size: int = 0
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    #: Epochs at which the step schedule multiplies the lr by ``gamma``.
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    #: LARS trust coefficient (timm's eta) and clipping of the adapted lr at the group lr.
    lars_trust_coeff: float = 0.001
    lars_trust_clip: bool = False
    augment: bool = True
    #: Area range of the augmented epochs' RandomResizedCrop (the papers' Inception crop).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    #: Image folders only: side of the crops and of the centre test view (None: the encoder's
    #: pretraining size), DataLoader workers, and the storage type of extracted features
    #: (float16 halves ImageNet's 10.5 GB of float32 train features).
    image_size: int | None = None
    num_workers: int = 4
    feature_dtype: str = "float32"
    #: Feature treatments before the classifier, in this order: L2 normalisation, then
    #: standardisation with the mean/std of the (unaugmented) train features, then a
    #: BatchNorm without affine parameters trained with the classifier.
    l2_normalize: bool = False
    standardize: bool = False
    batchnorm: bool = False
    ridge_lambda: float = 1.0
    #: logistic: l2 penalties lambda, log-spaced (from, to, count); sklearn's C = 1 / (lambda * n).
    logistic_lambdas: tuple[float, float, int] = (1e-6, 1e5, 45)
    #: logistic: part of the training split held out (stratified) to pick lambda.
    val_fraction: float = 0.2
    max_iter: int = 1000

    def __post_init__(self) -> None:
        for key, value, allowed in (
            ("solver", self.solver, SOLVERS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"linear probe {key} must be one of {list(allowed)}, not {value!r}")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("linear probe schedule 'step' needs milestones (epochs)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"linear probe val_fraction must be in (0, 1), not {self.val_fraction}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"linear probe crop_scale must satisfy 0 < min <= max <= 1, not {self.crop_scale}")
        if self.num_workers < 0:
            raise ValueError(f"linear probe num_workers must be >= 0, not {self.num_workers}")
        check_feature_dtype(self.feature_dtype)

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / self.base_batch_size if self.base_batch_size else self.lr


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


def logistic_probe(
    train_feats: torch.Tensor,
    train_y: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    config: LinearConfig,
    seed: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Kornblith et al. (2019) / SimCLR transfer protocol; class scores on ``test_feats`` and the choice made.

    L2-regularised multinomial logistic regression (L-BFGS). The penalty is picked by top-1 on
    a stratified held-out part of the training split, from the strongest penalty down with
    warm starts, then the classifier is refit on the whole training split.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = train_feats.double().numpy(), train_y.numpy()
    start, stop, count = config.logistic_lambdas
    lambdas = np.logspace(math.log10(start), math.log10(stop), int(count))[::-1]  # strong -> weak (warm starts)
    counts = np.bincount(y, minlength=num_classes)
    stratify = y if counts[counts > 0].min() >= 2 else None
    fit_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=config.val_fraction, random_state=seed, stratify=stratify
    )
    unconverged = 0

    def fit(idx: np.ndarray, lam: float, model: Any = None) -> Any:
        nonlocal unconverged
        model = model or LogisticRegression(max_iter=config.max_iter, warm_start=True)
        model.set_params(C=1.0 / (lam * len(idx)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x[idx], y[idx])
        unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        return model

    model, scores = None, []
    for lam in lambdas:
        model = fit(fit_idx, float(lam), model)
        scores.append(float((model.predict(x[val_idx]) == y[val_idx]).mean()))
    best = int(np.argmax(scores))  # first maximum: the strongest penalty among ties
    final = fit(np.arange(len(y)), float(lambdas[best]))
    logits = torch.full((len(test_feats), num_classes), -torch.inf, dtype=torch.float64)
    logits[:, torch.from_numpy(final.classes_)] = torch.from_numpy(
        final.decision_function(test_feats.double().numpy()).reshape(len(test_feats), -1)
    )
    info = {
        "lambda": float(lambdas[best]),
        "C": float(final.C),
        "val_top1": 100.0 * scores[best],
        "lambdas_tried": len(lambdas),
        "unconverged_fits": unconverged,
    }
    return logits.float(), info


def lr_lambda(config: LinearConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step lr factor: linear warm-up, then cosine to 0, steps at epoch milestones, or constant."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if config.schedule == "step":
            epoch = step // steps_per_epoch
            return config.gamma ** sum(epoch >= m for m in config.milestones)
        return 1.0

    return factor


def build_linear_optimizer(classifier: nn.Module, config: LinearConfig) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov) or timm's LARS through the engine's ``build_optimizer``.

    LARS adapts the weight's lr even at weight decay 0 (``always_adapt``, as solo-learn's LARS
    does for the linear probe of 002); the bias keeps the plain lr (solo-learn's
    ``exclude_bias_n_norm``).
    """
    from sslaug.engine.trainer import build_optimizer  # lazily: the engine imports more than a probe needs

    weights = [p for p in classifier.parameters() if p.ndim > 1]
    others = [p for p in classifier.parameters() if p.ndim <= 1]
    group = {"weight_decay": config.weight_decay, "nesterov": config.nesterov}
    if config.optimizer == "lars":
        lars = {"always_adapt": True, "trust_coeff": config.lars_trust_coeff, "trust_clip": config.lars_trust_clip}
        groups = [{"params": weights, **group, **lars}, {"params": others, **group, "always_adapt": False}]
    else:
        groups = [{"params": weights + others, **group}]
    return build_optimizer(groups, config.optimizer, config.effective_lr, config.momentum, fused=False)


class FeatureTransform(nn.Module):
    """L2 normalisation and train-set standardisation of features (fixed, not trained)."""

    def __init__(self, l2_normalize: bool, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:
            feats = F.normalize(feats, dim=1)
        return (feats - self.mean) / self.std


def feature_transform(config: LinearConfig, clean_train_feats: torch.Tensor | None, dim: int) -> FeatureTransform:
    """The fixed feature treatment; standardisation statistics come from the unaugmented train features."""
    mean, std = torch.zeros(dim), torch.ones(dim)
    if config.standardize:
        assert clean_train_feats is not None
        clean_train_feats = clean_train_feats.float()  # float16 storage: statistics in float32
        feats = F.normalize(clean_train_feats, dim=1) if config.l2_normalize else clean_train_feats
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    return FeatureTransform(config.l2_normalize, mean, std)


Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def feature_batches(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device) -> Batches:
    """One epoch of (features, labels) batches of precomputed features, shuffled by the global RNG."""
    order = torch.randperm(labels.shape[0])
    for start in range(0, order.shape[0], batch_size):
        idx = order[start : start + batch_size]
        yield feats[idx].to(device).float(), labels[idx].to(device)


@torch.no_grad()
def frozen_features(encoder: nn.Module, views_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 features of float views in [0, 255] through the frozen encoder (no grad, autocast on CUDA)."""
    with autocast(device, True):
        return encoder(normalize_uint8(views_uint8)).float()


def array_view_batches(
    encoder: nn.Module, train: tuple[torch.Tensor, torch.Tensor], crop: nn.Module, batch_size: int, device: torch.device
) -> Batches:
    """One epoch of an in-memory split: random-resized crop + flip on the device, then the frozen encoder."""
    train_x, train_y = train
    order = torch.randperm(train_y.shape[0])
    for start in range(0, order.shape[0], batch_size):
        idx = order[start : start + batch_size]
        with torch.no_grad():
            views = crop(train_x[idx].to(device).float() / 255) * 255
        yield frozen_features(encoder, views, device), train_y[idx].to(device)


def folder_view_batches(
    encoder: nn.Module,
    train: FolderSplit,
    config: LinearConfig,
    device: torch.device,
    seed: int,
    epoch: int,
    generator: torch.Generator,
) -> Batches:
    """One epoch of an image-folder split streamed from disk.

    The DataLoader workers decode each photo whole and cut one RandomResizedCrop of
    ``config.crop_scale`` (crops.py's crop-on-decode, seeded by (seed, epoch, index)); the
    flip follows on the device. The order is a permutation from ``generator`` (the run seed).
    """
    from sslaug.data.crops import CropSpec, RandomCropViews
    from sslaug.data.formats import open_classification

    views = RandomCropViews(
        open_classification(train.data, train.split), [CropSpec(train.image_size, config.crop_scale)], seed, epoch
    )
    order = torch.randperm(len(train.indices), generator=generator)
    loader = DataLoader(
        views,
        batch_size=config.batch_size,
        sampler=train.indices[order.numpy()].tolist(),
        num_workers=train.num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
    )
    flip = K.RandomHorizontalFlip().to(device)
    for step, (crops,) in enumerate(loader):
        labels = train.labels[order[step * config.batch_size : (step + 1) * config.batch_size]]
        with torch.no_grad():
            views_float = flip(crops.to(device, non_blocking=True).float() / 255) * 255
        yield frozen_features(encoder, views_float, device), labels.to(device)


def train_linear(
    encoder: nn.Module,
    train: EvalSplit,
    test: EvalSplit,
    num_classes: int,
    config: LinearConfig,
    device: torch.device,
    seed: int,
    info: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train a linear classifier on the frozen encoder; top-1/top-5 etc. on ``test`` in percent.

    ``train`` / ``test``: in-memory (images, labels) of an array split, or a
    :class:`~sslaug.evaluate.common.FolderSplit` streamed from disk.
    ``info``, when given, receives facts about the run (steps, the logistic solver's choice).
    """
    torch.manual_seed(seed)
    info = {} if info is None else info
    dtype = check_feature_dtype(config.feature_dtype)
    train_y, test_y = split_labels(train), split_labels(test)
    test_feats = split_features(encoder, test, device, dtype)
    if config.solver == "ridge":
        train_feats = split_features(encoder, train, device, dtype).float()
        return topk_accuracy(
            ridge_probe(train_feats, train_y, test_feats.float(), num_classes, config.ridge_lambda), test_y
        )
    if config.solver == "logistic":
        train_feats = split_features(encoder, train, device, dtype).float()
        transform = feature_transform(config, train_feats, encoder.feature_dim)
        with torch.no_grad():
            logits, choice = logistic_probe(
                transform(train_feats),
                train_y,
                transform(test_feats.float()),
                num_classes,
                config,
                seed,
            )
        info.update(choice)
        return topk_accuracy(logits, test_y)
    needs_clean = config.standardize or not config.augment
    clean_train_feats = split_features(encoder, train, device, dtype) if needs_clean else None
    transform = feature_transform(config, clean_train_feats, encoder.feature_dim).to(device)
    train_feats = None if config.augment else clean_train_feats
    if config.augment and not isinstance(train, FolderSplit):
        crop = nn.Sequential(
            K.RandomResizedCrop(tuple(train[0].shape[-2:]), scale=config.crop_scale), K.RandomHorizontalFlip()
        ).to(device)
    layers = [nn.BatchNorm1d(encoder.feature_dim, affine=False)] if config.batchnorm else []
    classifier = nn.Sequential(*layers, nn.Linear(encoder.feature_dim, num_classes)).to(device)
    optimizer = build_linear_optimizer(classifier, config)
    steps_per_epoch = math.ceil(train_y.shape[0] / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, steps_per_epoch))
    loader_generator = torch.Generator().manual_seed(seed)
    encoder.eval().to(device)
    classifier.train()
    for epoch in range(config.epochs):
        if train_feats is not None:
            batches = feature_batches(train_feats, train_y, config.batch_size, device)
        elif isinstance(train, FolderSplit):
            batches = folder_view_batches(encoder, train, config, device, seed, epoch, loader_generator)
        else:
            batches = array_view_batches(encoder, train, crop, config.batch_size, device)
        for feats, labels in batches:
            loss = F.cross_entropy(classifier(transform(feats)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    info.update(steps=config.epochs * steps_per_epoch, lr=config.effective_lr)
    classifier.eval()
    with torch.no_grad():
        logits = classifier(transform(test_feats.to(device).float())).cpu()
    return topk_accuracy(logits, test_y)


def probe_image_size(config_size: int | None, encoder_meta: dict[str, Any]) -> int:
    """Image folders' crop / test-view side: the config's, else the encoder's pretraining size."""
    return int(config_size or encoder_meta["image_size"])


def run_linear(
    encoder: str | Path, data: str | Path, train_split: str, test_split: str, spec: Any, seed: int, out: str | Path
) -> dict[str, Any]:
    """Linear probe of ``encoder`` on ``data`` (array or image-folder format); writes ``out`` atomically."""
    start = time.time()
    config = apply_overrides(LinearConfig, spec)
    meta = read_meta(data)
    device = pick_device()
    model, encoder_meta = load_encoder(check_encoder_path(encoder), map_location=device)
    size = probe_image_size(config.image_size, encoder_meta)
    train = open_eval_split(data, train_split, size, config.num_workers)
    test = open_eval_split(data, test_split, size, config.num_workers)
    info: dict[str, Any] = {"device": device.type, "train_images": int(split_labels(train).shape[0])}
    if isinstance(train, FolderSplit):
        info["image_size"] = size
    metrics = train_linear(model, train, test, int(meta["num_classes"]), config, device, seed, info)
    return write_result(out, "linear", metrics, config, time.time() - start, info=info, encoder=encoder, data=data)


def main(argv: list[str] | None = None) -> int:
    return cli_main("linear", "Linear probe on a frozen pretrained encoder.", run_linear, argv, test_split="test")


if __name__ == "__main__":
    raise SystemExit(main())

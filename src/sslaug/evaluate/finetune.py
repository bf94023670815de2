"""Full fine-tuning of a pretrained encoder on a labelled classification dataset.

This is the "Fine-tuning" half of SASSL Table 2 (papers/000_88efd4324cd49182.txt,
Sec. 5.2): the whole pretrained ResNet plus a new linear head are trained with
labels on each target dataset, and top-1 (and top-5) accuracy is reported on its
test split.

The paper defers the fine-tuning hyperparameters to its Appendix A.4, which is
missing from the project's copy of the text; Sec. 5.1 states the set-up follows
"the canonical SSL setup used to pre-train SimCLR and BYOL". The defaults below
are therefore the canonical SimCLR/BYOL transfer fine-tuning protocol
(SimCLR, Chen et al. 2020, App. B.8; BYOL, Grill et al. 2020, App. D; both
following Kornblith et al. 2019): SGD with Nesterov momentum 0.9, batch 256,
20,000 steps, cosine learning-rate decay, batch-norm momentum
``max(1 - 10/s, 0.9)`` (TF convention, s = steps per epoch), training
augmentation = random-resized crop + horizontal flip only, test = resize the
short side to ``size / 0.875`` and centre-crop ``size``. Those papers grid-search
learning rate and weight decay per dataset; SASSL says it does no
hyperparameter tuning (Sec. 5.2), so one fixed point of that grid is the default.

Entry point::

    python -m sslaug.evaluate.finetune --encoder ENC.pt --data DIR \
        --train-split train --test-split test --spec '{"steps": 100}' --seed 0 --out metrics.json
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sslaug.augment.views import ViewPipeline, ViewRecipe, normalize_uint8
from sslaug.data.formats import open_classification, read_meta
from sslaug.evaluate.common import (
    autocast,
    check_encoder_path,
    cli_main,
    infinite_batches,
    pick_device,
    seed_everything,
    write_result,
)
from sslaug.models.backbones import load_encoder
from sslaug.settings import apply_overrides

C = TypeVar("C")


# --------------------------------------------------------------------------- config


@dataclass
class FinetuneConfig:
    """Hyperparameters of full fine-tuning (SASSL Table 2, fine-tuning rows).

    Defaults = the SimCLR/BYOL transfer fine-tuning protocol that SASSL's
    Sec. 5.1 says it follows (papers/000_88efd4324cd49182.txt; its App. A.4 with
    the exact values is not in the project's copy of the paper).

    Attributes:
        steps: optimisation steps (SimCLR App. B.8 / BYOL App. D: 20,000 at batch 256).
        epochs: if set, train this many epochs instead of ``steps`` (mini scale).
        batch_size: images per step (256 in SimCLR/BYOL fine-tuning).
        lr: initial learning rate. SimCLR/BYOL pick it from a 7-point log grid over
            [1e-4, 0.1] per dataset; 0.01 is a point of that grid (no tuning, as SASSL).
        weight_decay: L2 weight decay, one point (1e-5) of the same papers' grid
            {0} U logspace(1e-6, 1e-3).
        momentum: SGD momentum (0.9).
        nesterov: Nesterov momentum (True in SimCLR/BYOL/Kornblith et al.).
        schedule: ``cosine`` decay to 0 over training (Kornblith et al. 2019), or ``constant``.
        bn_momentum: PyTorch BN momentum; ``None`` = SimCLR's rule, i.e. TF decay
            ``max(1 - 10/s, 0.9)`` -> PyTorch momentum ``min(10/s, 0.1)``.
        image_size: training / test resolution; ``None`` = the encoder's pretraining size.
        crop_scale: random-resized-crop area range (Inception crop, (0.08, 1)).
        flip_p: horizontal flip probability.
        test_crop_ratio: test centre-crop fraction: resize short side to
            ``image_size / ratio`` then crop ``image_size`` (224/256 = 0.875).
            ``None`` = 0.875 for decoded photos (imagefolder format) and 1.0 for
            array-format sets, which are stored at their final low resolution
            (CIFAR-style protocols test on the uncropped image).
        label_smoothing: cross-entropy label smoothing (0 in the canonical protocol).
        amp: bf16 autocast when training on CUDA (ignored on CPU).
        num_workers: DataLoader worker processes.
        eval_batch_size: batch size for the test pass.
    """

    steps: int = 20_000
    epochs: int | None = None
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 1e-5
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    bn_momentum: float | None = None
    image_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    test_crop_ratio: float | None = None
    label_smoothing: float = 0.0
    amp: bool = True
    num_workers: int = 4
    eval_batch_size: int = 256

    def validate(self) -> None:
        """Fail early, with the field's name, on values that cannot work."""
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', not {self.schedule!r}")
        for name in ("steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be positive or null, got {self.epochs}")
        if self.test_crop_ratio is not None and not 0 < self.test_crop_ratio <= 1:
            raise ValueError(f"test_crop_ratio must be in (0, 1], got {self.test_crop_ratio}")


# --------------------------------------------------------------------------- data


def _open_split(data: Path, split: str, load_size: int) -> Dataset:
    """The classification split via the project's dataset formats, decoded at ``load_size``."""
    return open_classification(data, split, image_size=load_size)


def _sizes(config: FinetuneConfig, fmt: str, encoder_size: int) -> tuple[int, float, int]:
    """(crop size, test crop ratio, load size) for a dataset format.

    Array sets are loaded at the crop size (a no-op when stored at it); decoded
    photos at ``size / ratio`` (short side 256 for 224 crops), so the training
    random-resized crop and the test centre crop both start from the same image.
    """
    size = int(config.image_size or encoder_size)
    ratio = config.test_crop_ratio if config.test_crop_ratio is not None else (1.0 if fmt == "array" else 0.875)
    load = size if fmt == "array" else round(size / ratio)
    return size, ratio, load


def _fixed_size(img: torch.Tensor, size: int) -> torch.Tensor:
    """Short-side resize + centre crop of one uint8 image to ``size`` (only for ragged splits)."""
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    out = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[0, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)


def make_collate(load_size: int) -> Callable[[list[tuple[torch.Tensor, int]]], tuple[torch.Tensor, torch.Tensor]]:
    """Stack (uint8 image, label) pairs; grey images become RGB; ragged sizes are resized."""

    def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [torch.as_tensor(img) for img, _ in batch]
        images = [img.expand(3, -1, -1) if img.shape[0] == 1 else img for img in images]
        if len({tuple(img.shape) for img in images}) > 1:
            images = [_fixed_size(img, load_size) for img in images]
        labels = torch.tensor([int(label) for _, label in batch], dtype=torch.long)
        return torch.stack(images).contiguous(), labels

    return collate


def eval_transform(images: torch.Tensor, size: int, crop_ratio: float) -> torch.Tensor:
    """Batched test pre-processing: short-side resize to size/ratio, centre crop, normalise."""
    h, w = images.shape[-2:]
    resize = round(size / crop_ratio)
    scale = resize / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = images.float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp_(0, 255)
    top, left = (nh - size) // 2, (nw - size) // 2
    return normalize_uint8(x[..., top : top + size, left : left + size])


# --------------------------------------------------------------------------- model / training


class Classifier(nn.Module):
    """Pretrained encoder (pooled features) + a new linear head, all trained."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set every batch-norm layer's running-statistics momentum."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """Learning rate at ``step`` of ``total``: cosine decay to 0, or constant."""
    if schedule == "constant":
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


@torch.no_grad()
def evaluate_topk(model: nn.Module, loader: DataLoader, device: torch.device, size: int,
                  crop_ratio: float, amp: bool) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) over a loader; top-5 is 100 when classes <= 5."""
    model.eval()
    correct1 = correct5 = total = 0
    for images, labels in loader:
        x = eval_transform(images.to(device, non_blocking=True), size, crop_ratio)
        labels = labels.to(device)
        with autocast(device, amp):
            logits = model(x).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(dim=1).sum())
        total += labels.numel()
    if total == 0:
        raise ValueError("the test split is empty")
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


def run_finetune(encoder: str | Path, data: str | Path, train_split: str, test_split: str,
                 spec: dict[str, Any] | str | None, seed: int, out: str | Path) -> dict[str, Any]:
    """Fine-tune ``encoder`` on ``data``'s train split, evaluate on its test split, write ``out``.

    ``out`` is only written (atomically) after a successful evaluation.
    """
    start = time.time()
    config = apply_overrides(FinetuneConfig, spec)
    encoder_path = check_encoder_path(encoder)
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {data}")
    generator = seed_everything(seed)
    device = pick_device()

    data_meta = read_meta(data)
    num_classes = int(data_meta["num_classes"])
    if num_classes < 2:
        raise ValueError(f"{data} has {num_classes} classes; fine-tuning needs a labelled set")
    backbone, meta = load_encoder(encoder_path)
    size, ratio, load_size = _sizes(config, str(data_meta.get("format")), int(meta["image_size"]))
    train_set = _open_split(data, train_split, load_size)
    test_set = _open_split(data, test_split, load_size)
    if len(train_set) == 0:
        raise ValueError(f"train split {train_split!r} of {data} is empty")

    model = Classifier(backbone, int(meta["feature_dim"]), num_classes).to(device)
    steps_per_epoch = max(1, len(train_set) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch if config.epochs else config.steps
    set_bn_momentum(model, config.bn_momentum if config.bn_momentum is not None else min(10.0 / steps_per_epoch, 0.1))

    collate = make_collate(load_size)
    pin = device.type == "cuda"

    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, drop_last=len(train_set) >= config.batch_size,
        generator=generator, num_workers=config.num_workers, collate_fn=collate, pin_memory=pin,
        persistent_workers=config.num_workers > 0,
    )

    augment = ViewPipeline(
        ViewRecipe(crop_scale=tuple(config.crop_scale), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                   solarize_p=0.0, flip_p=config.flip_p),
        size,
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    model.train()
    batches = infinite_batches(train_loader)
    last_loss = float("nan")
    for step in range(total_steps):
        images, labels = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, config.lr, config.schedule)
        x = augment(images.to(device, non_blocking=True))
        with autocast(device, config.amp):
            loss = criterion(model(x).float(), labels.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite fine-tuning loss at step {step}: {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last_loss = float(loss.detach())

    test_loader = DataLoader(test_set, batch_size=config.eval_batch_size, shuffle=False,
                             num_workers=config.num_workers, collate_fn=collate, pin_memory=pin)
    metrics = evaluate_topk(model, test_loader, device, size, ratio, config.amp)
    notes = ["top5 is trivially 100 with <= 5 classes"] if num_classes <= 5 else []
    info = {"steps": total_steps, "steps_per_epoch": steps_per_epoch, "num_classes": num_classes,
            "num_train": len(train_set), "num_test": len(test_set), "image_size": size,
            "test_crop_ratio": ratio,
            "device": str(device), "final_train_loss": last_loss, "encoder": str(encoder_path),
            "backbone": meta["backbone"], "seed": seed}
    return write_result(out, "finetune", metrics, config, time.time() - start, notes, info, encoder_path, data)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sslaug.evaluate.finetune``; input errors exit with status 1 and a one-line message."""
    return cli_main("finetune", "Fine-tune a pretrained encoder (SASSL Table 2 protocol).",
                    run_finetune, argv, test_split="test")


if __name__ == "__main__":
    sys.exit(main())

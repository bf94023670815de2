"""Shapes, views, sslaug's real training step and the raw backbone step, shared by the bench scripts.

"Ours" is :class:`sslaug.engine.trainer.Trainer` itself: each timed chunk of ``n`` steps is
one call of ``Trainer.fit()`` over a stand-in batch source that yields the same uint8
batch ``n`` times and a view maker that returns views made once, so the timed code is
the real loop body (schedule, ``method(views, progress)`` under the Trainer's autocast,
``zero_grad``/``backward``/``step``, ``after_step``, the non-finite flag and log sums, the
once-per-log-window sync) with the optimiser, channels_last and ``torch.compile`` set up
by the Trainer. The trainer runs with ``is_main = False`` (as a non-zero DDP rank), so no
checkpoint, metrics file or progress bar is written inside the timed loop.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from _timing import ROOT, Side, autocast
from torch import nn

from sslaug.augment.view_maker import ViewMaker
from sslaug.augment.views import ViewPipeline, recipe_for
from sslaug.engine.trainer import TrainConfig, Trainer
from sslaug.methods import METHODS, build_method
from sslaug.models.backbones import build_backbone

#: Every base method lightly has a reference step for, in the order of the tables.
BASE_METHODS = ("simclr", "mocov2", "mocov3", "byol", "simsiam", "barlowtwins", "dino")

# One optimiser for every method and both sides (lightly's examples use torch SGD), so the
# ratio compares the methods' steps, not SGD with LARS: lr 0.3 x batch / 256, momentum 0.9.
BASE_LR = 0.3
WEIGHT_DECAY = 1e-4
MOMENTUM = 0.9


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: backbone, image size and batch; heads come from ``config/scales/<scale>.yaml``."""

    name: str
    backbone: str
    image_size: int
    batch: int  # the real shape's batch (used on CUDA)
    cpu_batch: int  # what a few-minute CPU run affords
    scale: str
    description: str


SHAPES: dict[str, Shape] = {
    "mini": Shape("mini", "tiny", 32, 128, 128, "mini", "tiny convnet, 32 px"),
    "cifar": Shape("cifar", "resnet18_cifar", 32, 256, 64, "cifar", "ResNet-18 CIFAR stem, 32 px"),
    "imagenet": Shape("imagenet", "resnet50", 224, 256, 8, "paper", "ResNet-50, 224 px"),
}


def shape_batch(shape: Shape, device: torch.device, override: int | None) -> int:
    """The batch of ``shape`` on ``device`` (the real one on CUDA, the CPU one otherwise)."""
    if override:
        return override
    return shape.batch if device.type == "cuda" else shape.cpu_batch


def _scale(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config" / "scales" / f"{name}.yaml").read_text())


def method_settings(method: str, shape: Shape) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(hparams, view overrides)`` of ``method`` in the shape's scale config, or None when absent."""
    entry = _scale(shape.scale).get("methods", {}).get(method)
    if entry is None:
        return None
    return dict(entry.get("hparams", {})), dict(entry.get("views") or {})


def ours_available(method: str, shape: Shape) -> str | None:
    """Why sslaug's ``method`` cannot be timed at ``shape`` (None: it can)."""
    if method not in METHODS:
        return f"sslaug has no method {method!r} yet (sslaug.methods.METHODS: {sorted(METHODS)})"
    if method_settings(method, shape) is None:
        return f"config/scales/{shape.scale}.yaml has no methods.{method}"
    return None


def random_images(batch: int, size: int, device: torch.device, seed: int) -> torch.Tensor:
    """A uint8 batch ``[batch, 3, size, size]`` from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)


def make_views(
    method: str, overrides: dict[str, Any], shape: Shape, batch: int, device: torch.device, seed: int, cl: bool
) -> list[torch.Tensor]:
    """The method's two views, made once with sslaug's own batched pipelines."""
    images = random_images(batch, shape.image_size, device, seed)
    torch.manual_seed(seed)
    pipelines = [ViewPipeline(r, shape.image_size).to(device) for r in recipe_for(method, overrides)]
    views = [p(images) for p in pipelines]
    return [v.contiguous(memory_format=torch.channels_last) for v in views] if cl else views


class FixedViews(ViewMaker):
    """A view maker returning views made once (augmentation is timed on its own elsewhere)."""

    def __init__(self, views: list[torch.Tensor]) -> None:
        super().__init__([])
        self.views = views

    def forward(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        return self.views


class RepeatBatch:
    """Stands in for :class:`sslaug.engine.batches.BatchSource`: yields one batch ``remaining`` times."""

    steps_per_epoch = 10**9  # one endless epoch: the Trainer's total_steps ends each chunk

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.indices = torch.arange(images.shape[0])
        self.remaining = 0

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.remaining):
            yield self.images, self.indices


def build_ours(
    method: str,
    shape: Shape,
    batch: int,
    device: torch.device,
    seed: int,
    views: list[torch.Tensor],
    bf16: bool,
    cl: bool,
    compile_model: bool,
    work_dir: Path | None = None,
) -> tuple[Trainer, Side]:
    """sslaug's ``method`` at ``shape`` in a real :class:`Trainer`; the side runs ``Trainer.fit`` per chunk."""
    hparams, _ = method_settings(method, shape) or ({}, {})
    torch.manual_seed(seed)
    backbone = build_backbone(shape.backbone, image_size=shape.image_size)
    model = build_method(method, backbone, {**hparams, "epochs": 1})  # the engine adds the run's epochs
    config = TrainConfig(
        epochs=1,
        batch_size=batch,
        optimizer="sgd",
        base_lr=BASE_LR,
        lr_scaling="linear",
        weight_decay=WEIGHT_DECAY,
        momentum=MOMENTUM,
        precision="bf16" if bf16 else "fp32",
        channels_last=cl,
        compile=compile_model,
        checkpoint_every_steps=0,
        checkpoint_every_minutes=0.0,
        num_workers=0,
    )
    source = RepeatBatch(random_images(batch, shape.image_size, device, seed))
    run_dir = work_dir or Path(tempfile.mkdtemp(prefix="sslaug-bench-"))
    trainer = Trainer(model, FixedViews(views), source, config, run_dir, device, seed, "bench")  # type: ignore[arg-type]
    trainer.is_main = False  # no checkpoint / metrics / progress bar inside the timed loop

    def run(start: int, n: int) -> None:
        source.remaining = n
        trainer.total_steps = trainer.step + n
        trainer.fit()

    return trainer, run


def build_raw_backbone(
    shape: Shape, device: torch.device, seed: int, views: list[torch.Tensor], bf16: bool, cl: bool, compile_model: bool
) -> Side:
    """The ceiling: the bare backbone's forward + backward of both views (no heads, loss, optimiser)."""
    torch.manual_seed(seed)
    backbone: nn.Module = build_backbone(shape.backbone, image_size=shape.image_size).to(device)
    if cl:
        backbone = backbone.to(memory_format=torch.channels_last)
    backbone.train()
    model = torch.compile(backbone) if compile_model else backbone

    def run(start: int, n: int) -> None:
        for _ in range(n):
            with autocast(device, bf16):
                loss = sum(model(v).float().mean() for v in views[:2])
            backbone.zero_grad(set_to_none=True)
            loss.backward()

    return run

#!/usr/bin/env python
"""Images/s of sslaug's pretraining step beside lightly's reference step, per method and shape.

A benchmark, not a test. For every base method lightly has a reference for (SimCLR,
MoCo v2, MoCo v3, BYOL, SimSiam, Barlow Twins, DINO) and every shape (mini, cifar,
imagenet; see ``bench/_steps.py``) it times

* ours    = sslaug's real training step: ``Trainer.fit`` (see ``bench/_steps.py``) around
            ``build_method`` with the scale config's heads (``config/scales/<scale>.yaml``);
* lightly = the step of lightly's ``examples/pytorch/<method>.py`` with the same backbone
            (same seed, so identical initial weights), lightly's heads of the same sizes,
            lightly's loss, ``update_momentum`` and ``cosine_schedule``;

on the same two pre-augmented views (made once; augmentation is timed by
``dataloader_throughput.py``), same batch, same optimiser (torch SGD, lr 0.3 x batch/256,
momentum 0.9, wd 1e-4), interleaved ours / lightly in ``--rounds`` rounds after a warm-up.
It prints images/s (median [min-max] over rounds) and the ratio ours / lightly (median
and range of the per-round ratios; > 1 = sslaug faster).

Lightly has no MoCo v3 example: its MoCo v3 side is assembled from lightly's parts
(``MoCoProjectionHead`` with 3 layers and BN as projector, 2 layers with BN as
predictor, ``NTXentLoss`` in-batch). DINO is timed only when ``sslaug.methods`` has
``dino`` and the shape's scale config has ``methods.dino``; otherwise its row says why.

Example (about 1 min at mini, 5 at cifar b64, 8 at imagenet b8 on one CPU thread):
    .venv/bin/python bench/pretrain_throughput.py --shapes mini --out bench/pretrain_throughput_mini_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from typing import Any

import _timing as T
import torch
from _steps import (
    BASE_LR,
    BASE_METHODS,
    MOMENTUM,
    SHAPES,
    WEIGHT_DECAY,
    Shape,
    build_ours,
    make_views,
    method_settings,
    ours_available,
    shape_batch,
)
from torch import nn

#: Steps per round and warm-up steps per shape: (CPU, CUDA).
STEPS = {"mini": (4, 50), "cifar": (1, 20), "imagenet": (1, 10)}
WARMUP = {"mini": (2, 10), "cifar": (1, 5), "imagenet": (1, 5)}


class _Encoder(nn.Module):
    """backbone -> flatten -> head, as every lightly example's ``forward``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).flatten(start_dim=1))


def _momentum_copy(module: nn.Module) -> nn.Module:
    from lightly.models.utils import deactivate_requires_grad

    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


def build_lightly(
    method: str,
    shape: Shape,
    batch: int,
    device: torch.device,
    seed: int,
    views: list[torch.Tensor],
    bf16: bool,
    cl: bool,
    compile_model: bool,
    total_steps: int,
) -> T.Side:
    """The step of lightly's example for ``method``, heads sized as ours."""
    from lightly import loss as L
    from lightly.models.modules import heads as H
    from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    from sslaug.models.backbones import build_backbone

    hp, _ = method_settings(method, shape) or ({}, {})
    torch.manual_seed(seed)
    backbone = build_backbone(shape.backbone, image_size=shape.image_size)
    feat = int(backbone.feature_dim)
    modules = nn.ModuleDict()
    criterion: nn.Module
    if method == "simclr":
        modules["online"] = _Encoder(backbone, H.SimCLRProjectionHead(feat, hp["proj_hidden_dim"], hp["proj_dim"]))
        criterion = L.NTXentLoss(temperature=hp["temperature"])
    elif method == "mocov2":
        modules["online"] = _Encoder(backbone, H.MoCoProjectionHead(feat, hp["proj_hidden_dim"], hp["proj_dim"]))
        criterion = L.NTXentLoss(temperature=hp["temperature"], memory_bank_size=(hp["queue_size"], hp["proj_dim"]))
    elif method == "mocov3":
        layers = int(hp.get("proj_layers", 3))
        projector = H.MoCoProjectionHead(feat, hp["proj_hidden_dim"], hp["proj_dim"], layers, batch_norm=True)
        modules["online"] = _Encoder(backbone, projector)
        modules["predictor"] = H.MoCoProjectionHead(hp["proj_dim"], hp["pred_hidden_dim"], hp["proj_dim"], 2, True)
        criterion = L.NTXentLoss(temperature=hp["temperature"])
    elif method == "byol":
        modules["online"] = _Encoder(backbone, H.BYOLProjectionHead(feat, hp["proj_hidden_dim"], hp["proj_dim"]))
        modules["predictor"] = H.BYOLPredictionHead(hp["proj_dim"], hp["pred_hidden_dim"], hp["proj_dim"])
        criterion = L.NegativeCosineSimilarity()
    elif method == "simsiam":
        modules["online"] = _Encoder(backbone, H.SimSiamProjectionHead(feat, hp["proj_hidden_dim"], hp["proj_dim"]))
        modules["predictor"] = H.SimSiamPredictionHead(hp["proj_dim"], hp["pred_hidden_dim"], hp["proj_dim"])
        criterion = L.NegativeCosineSimilarity()
    elif method == "barlowtwins":
        head = H.BarlowTwinsProjectionHead(feat, hp["proj_hidden_dim"], hp["proj_dim"])
        modules["online"] = _Encoder(backbone, head)
        criterion = L.BarlowTwinsLoss(lambda_param=hp.get("lambda_offdiag", 5e-3))
    elif method == "dino":  # our DINO's hparams: head_hidden_dim / head_bottleneck_dim / head_out_dim

        def dino_head() -> nn.Module:
            return H.DINOProjectionHead(
                feat,
                int(hp["head_hidden_dim"]),
                int(hp["head_bottleneck_dim"]),
                int(hp["head_out_dim"]),
                freeze_last_layer=int(hp.get("freeze_last_layer_epochs", 0)),
                norm_last_layer=bool(hp.get("norm_last_layer", True)),
            )

        modules["online"] = _Encoder(backbone, dino_head())
        # A new teacher head, as lightly's example (a weight-normed head cannot be deep-copied).
        modules["target"] = _Encoder(copy.deepcopy(backbone), dino_head())
        modules["target"].requires_grad_(False)
        criterion = L.DINOLoss(
            output_dim=int(hp["head_out_dim"]),
            teacher_temp=float(hp.get("teacher_temp", 0.04)),
            warmup_teacher_temp=float(hp.get("warmup_teacher_temp", 0.04)),
            warmup_teacher_temp_epochs=0,
            student_temp=float(hp.get("student_temp", 0.1)),
            center_momentum=float(hp.get("center_momentum", 0.9)),
        )
    else:
        raise ValueError(f"no lightly reference for {method!r}")
    has_target = method in ("mocov2", "mocov3", "byol", "dino")
    if has_target and "target" not in modules:
        modules["target"] = _momentum_copy(modules["online"])
    modules = modules.to(device)
    criterion = criterion.to(device)
    if cl:
        modules = modules.to(memory_format=torch.channels_last)
    modules.train()
    online = torch.compile(modules["online"]) if compile_model else modules["online"]
    target: nn.Module | None = modules["target"] if has_target else None
    lr = BASE_LR * batch / 256
    optimizer = torch.optim.SGD(
        [p for p in modules.parameters() if p.requires_grad], lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    x0, x1 = views[:2]
    symmetric = bool(hp.get("symmetric", False))
    momentum_base = float(hp.get("momentum_base", hp.get("momentum", 0.99)))

    def loss_of(step: int) -> torch.Tensor:
        if method == "simclr":
            return criterion(online(x0), online(x1))
        if method == "barlowtwins":
            return criterion(online(x0), online(x1))
        if method == "simsiam":
            z0, z1 = online(x0), online(x1)
            p0, p1 = modules["predictor"](z0), modules["predictor"](z1)
            return 0.5 * (criterion(z0.detach(), p1) + criterion(z1.detach(), p0))
        assert target is not None
        m = momentum_base if method == "mocov2" else cosine_schedule(step, total_steps, momentum_base, 1.0)
        update_momentum(modules["online"], target, m=m)  # before the forward, as lightly's examples
        if method == "mocov2":

            def key(x: torch.Tensor) -> torch.Tensor:  # lightly's shuffle-BN utilities
                shuffled, shuffle = batch_shuffle(x)
                with torch.no_grad():
                    return batch_unshuffle(target(shuffled), shuffle).detach()

            loss = criterion(online(x0), key(x1))
            if symmetric:
                loss = 0.5 * (loss + criterion(online(x1), key(x0)))
            return loss
        with torch.no_grad():
            k0, k1 = target(x0), target(x1)
        if method == "dino":
            return criterion([k0, k1], [online(x0), online(x1)], epoch=0)
        predictor = modules["predictor"]
        p0, p1 = predictor(online(x0)), predictor(online(x1))
        if method == "mocov3":
            return criterion(p0, k1) + criterion(p1, k0)
        return 0.5 * (criterion(p0, k1) + criterion(p1, k0))  # byol

    def run(start: int, n: int) -> None:
        for step in range(start, start + n):
            current = cosine_schedule(step, total_steps, lr, 0.0)
            for group in optimizer.param_groups:
                group["lr"] = current
            with T.autocast(device, bf16):
                loss = loss_of(step)
            loss.backward()
            if method == "dino":
                modules["online"].head.cancel_last_layer_gradients(current_epoch=0)
            optimizer.step()
            optimizer.zero_grad()

    return run


def bench_method(method: str, shape: Shape, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    batch = shape_batch(shape, device, args.batch_size if shape.name != "mini" else args.mini_batch_size)
    gpu = int(device.type == "cuda")
    steps = args.steps or STEPS[shape.name][gpu]
    warmup = args.warmup if args.warmup is not None else WARMUP[shape.name][gpu]
    row: dict[str, Any] = {
        "method": method,
        "shape": shape.name,
        "backbone": shape.backbone,
        "image_size": shape.image_size,
        "batch_size": batch,
        "steps_per_round": steps,
        "warmup": warmup,
    }
    reason = ours_available(method, shape)
    if reason is not None:
        row["skipped"] = reason
        return row
    _, overrides = method_settings(method, shape) or ({}, {})
    views = make_views(method, overrides, shape, batch, device, args.seed, args.cl)
    trainer, ours = build_ours(method, shape, batch, device, args.seed, views, args.bf16, args.cl, args.compile)
    if trainer.method.num_views > 2:
        row["skipped"] = f"sslaug's {method} takes {trainer.method.num_views} views (multi-crop): not in this harness"
        return row
    total = warmup + args.rounds * steps + 1
    theirs = build_lightly(method, shape, batch, device, args.seed, views, args.bf16, args.cl, args.compile, total)
    seconds = T.interleaved({"ours": ours, "lightly": theirs}, steps, args.rounds, warmup, device)
    row["ours_images_per_s"] = T.rate_stats(seconds["ours"], steps * batch)
    row["lightly_images_per_s"] = T.rate_stats(seconds["lightly"], steps * batch)
    row["ratio_ours_over_lightly"] = T.ratio_stats(seconds["ours"], seconds["lightly"])
    del trainer, ours, theirs, views
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(BASE_METHODS), help=f"comma list of {','.join(BASE_METHODS)}")
    p.add_argument("--shapes", default="mini,cifar,imagenet", help=f"comma list of {','.join(SHAPES)}")
    p.add_argument("--mini-batch-size", type=int, default=None, help="mini batch (default 128)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cifar / imagenet batch (default: 256 on CUDA; 64 cifar, 8 imagenet on CPU)",
    )
    p.add_argument("--steps", type=int, default=0, help="steps per round (default per shape: CPU 4/1/1, CUDA 50/20/10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per side (default: CPU 2/1/1, CUDA 10/5/5)")
    T.add_device_args(p)
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    shapes = [s for s in args.shapes.split(",") if s]
    for m in methods:
        if m not in BASE_METHODS:
            p.error(f"--methods: unknown method {m!r}; choose from {BASE_METHODS}")
    for s in shapes:
        if s not in SHAPES:
            p.error(f"--shapes: unknown shape {s!r}; choose from {sorted(SHAPES)}")
    device = T.setup_device(args)
    meta = T.describe(device, args, optimizer="torch SGD lr 0.3 x b/256, momentum 0.9, wd 1e-4 (both sides)")
    T.print_header(meta)
    t0 = time.perf_counter()
    rows = []
    for shape_name in shapes:
        for method in methods:
            row = bench_method(method, SHAPES[shape_name], args, device)
            rows.append(row)
            if "skipped" in row:
                print(f"  {method:11s} {shape_name:8s} skipped: {row['skipped']}", flush=True)
            else:
                r = row["ratio_ours_over_lightly"]
                print(
                    f"  {method:11s} {shape_name:8s} b{row['batch_size']}: ours {T.fmt_rate(row['ours_images_per_s'])} "
                    f"img/s, lightly {T.fmt_rate(row['lightly_images_per_s'])} img/s, ours/lightly "
                    f"{r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}]",
                    flush=True,
                )
    meta["wall_seconds"] = time.perf_counter() - t0
    print()
    table = []
    for r in rows:
        shape = f"{r['shape']} b{r['batch_size']}"
        if "skipped" in r:
            table.append([r["method"], shape, "-", "-", "-", f"not measured: {r['skipped']}"])
            continue
        q = r["ratio_ours_over_lightly"]
        table.append(
            [
                r["method"],
                shape,
                T.fmt_rate(r["ours_images_per_s"]),
                T.fmt_rate(r["lightly_images_per_s"]),
                f"{q['median']:.3f} [{q['min']:.3f}-{q['max']:.3f}]",
                "",
            ]
        )
    T.print_table(["method", "shape", "ours img/s", "lightly img/s", "ours/lightly", "note"], table)
    print(
        f"# img/s = images per second (2 views each), median [min-max] over {args.rounds} interleaved rounds; "
        f"wall {meta['wall_seconds']:.0f} s",
        flush=True,
    )
    T.write_json(args.out, {"meta": meta, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

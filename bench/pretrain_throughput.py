#!/usr/bin/env python
"""Pretraining throughput of sslaug's SimCLR / BYOL step beside the same step in lightly.

A benchmark, not a test: it prints steps/s and images/s and the ratio ours / lightly.

The timed step (identical in scope on both sides)
------------------------------------------------
    set this step's schedule value(s)         (python scalars: lr; BYOL's EMA momentum)
    forward of both views + loss               (BYOL: online and target network of both views)
    zero_grad + backward + optimizer.step
    momentum update of the target network      (BYOL only)

on two *pre-augmented* view tensors that stay on the device. Excluded on both sides:
data loading, augmentation, host<->device copies, logging/metrics. Augmentation is
excluded because lightly augments per image with torchvision in DataLoader worker
processes while sslaug augments whole batches with kornia in the training process;
sslaug's batched augmentation is reported on its own line instead (plus, for context,
lightly's per-image transform in one process).

"ours"    = the real sslaug code: ``build_backbone`` + ``build_method`` (SimCLR/BYOL with
            ``mlp_head`` heads, ``nt_xent_loss`` / ``cosine_regression_loss``), the optimizer
            built exactly as ``Trainer`` builds it (``build_optimizer`` over
            ``_param_groups``), the Trainer's inner loop body (lr_at -> method(views, progress)
            -> zero_grad -> backward -> step -> method.after_step).
"lightly" = the step of lightly's examples/pytorch/simclr.py and byol.py: a fresh backbone
            of the same type (same seed, so same initial weights), lightly heads
            (SimCLRProjectionHead / BYOLProjectionHead / BYOLPredictionHead), NTXentLoss /
            NegativeCosineSimilarity, deactivate_requires_grad + update_momentum, momentum from
            cosine_schedule; torch.optim.SGD with the same lr / momentum / weight decay /
            momentum as ours (one parameter group, as in lightly's examples).

Same batch, same dtype, same seed. On CUDA both sides run under bf16 autocast with the
model and the views in channels_last (as sslaug's Trainer does), and the device is
synchronised before every timer read. On CPU both sides run in fp32.

Runs of ours and lightly are interleaved (A B A B ...) in ``--rounds`` chunks of steps
after a warm-up of each, so drift in machine load hits both sides alike.

Example:
    .venv/bin/python bench/pretrain_throughput.py --out bench/results.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


from sslaug.augment.views import ViewPipeline, recipe_for  # noqa: E402
from sslaug.engine.trainer import _param_groups, build_optimizer, lr_at  # noqa: E402
from sslaug.methods import build_method  # noqa: E402
from sslaug.models.backbones import build_backbone  # noqa: E402

from lightly.loss import NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules.heads import (  # noqa: E402
    BYOLPredictionHead,
    BYOLProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.utils.scheduler import cosine_schedule  # noqa: E402

# ----------------------------------------------------------------------------------------
# Shapes. mini: config/scales/mini.yaml. cifar: ResNet-18 (CIFAR stem) with the paper /
# lightly-default head sizes (NB: config/scales/cifar.yaml uses other head sizes and LARS).
# Views overrides as in the scale configs (blur/solarize off at 32 px).
# ----------------------------------------------------------------------------------------
SHAPES: dict[str, dict[str, Any]] = {
    "mini": {
        "backbone": "tiny",
        "image_size": 32,
        "batch_size": 128,
        "hparams": {
            "simclr": {"proj_hidden_dim": 128, "proj_dim": 64, "temperature": 0.2},
            "byol": {"proj_hidden_dim": 256, "proj_dim": 64, "pred_hidden_dim": 256, "momentum_base": 0.99},
        },
        "views": {"simclr": {"blur_p": 0.0}, "byol": {"blur_p": 0.0, "solarize_p": 0.0}},
    },
    "cifar": {
        "backbone": "resnet18_cifar",
        "image_size": 32,
        "batch_size": 256,  # the real shape; the CPU default is --batch-size 64
        "hparams": {
            "simclr": {"proj_hidden_dim": 2048, "proj_dim": 128, "temperature": 0.2},
            "byol": {"proj_hidden_dim": 4096, "proj_dim": 256, "pred_hidden_dim": 4096, "momentum_base": 0.99},
        },
        "views": {"simclr": {"blur_p": 0.0}, "byol": {"blur_p": 0.0, "solarize_p": 0.0}},
    },
}

# Optimiser settings shared by both sides (mini.yaml's SGD settings).
BASE_LR = 0.3
WEIGHT_DECAY = 1e-4
MOMENTUM = 0.9


# ----------------------------------------------------------------------------------------
# lightly side: the modules of lightly's examples/pytorch/{simclr,byol}.py
# ----------------------------------------------------------------------------------------
class LightlySimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x).flatten(start_dim=1)
        return self.projection_head(x)


class LightlyBYOL(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int, pred_hidden: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, pred_hidden, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(y)
        return self.prediction_head(z)

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone_momentum(x).flatten(start_dim=1)
        z = self.projection_head_momentum(y)
        return z.detach()


# ----------------------------------------------------------------------------------------
# The two step functions. Each returns a callable step(i) -> None.
# ----------------------------------------------------------------------------------------
def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_ours(method_name: str, shape: dict[str, Any], batch: int, device: torch.device, seed: int,
              views: list[torch.Tensor], total_steps: int) -> tuple[nn.Module, Callable[[int], None]]:
    torch.manual_seed(seed)
    backbone = build_backbone(shape["backbone"], image_size=shape["image_size"])
    method = build_method(method_name, backbone, shape["hparams"][method_name]).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    method.train()
    lr = BASE_LR * batch / 256  # lr_scaling "linear", as TrainConfig.lr
    optimizer = build_optimizer(
        _param_groups(method, WEIGHT_DECAY, True), "sgd", lr=lr, momentum=MOMENTUM, fused=device.type == "cuda"
    )

    def step(i: int) -> None:  # Trainer.fit's inner loop body, minus view making and metrics
        current = lr_at(i, total_steps, 0, lr, 0.0)
        for group in optimizer.param_groups:
            group["lr"] = current
        progress = i / total_steps
        with _autocast(device):
            loss, _logs = method(views, progress)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(progress)

    return method, step


def make_lightly(method_name: str, shape: dict[str, Any], batch: int, device: torch.device, seed: int,
                 views: list[torch.Tensor], total_steps: int) -> tuple[nn.Module, Callable[[int], None]]:
    torch.manual_seed(seed)
    backbone = build_backbone(shape["backbone"], image_size=shape["image_size"])
    hp = shape["hparams"][method_name]
    feature_dim = int(backbone.feature_dim)
    if method_name == "simclr":
        model: nn.Module = LightlySimCLR(backbone, feature_dim, hp["proj_hidden_dim"], hp["proj_dim"])
        criterion: nn.Module = NTXentLoss(temperature=hp["temperature"])
    else:
        model = LightlyBYOL(backbone, feature_dim, hp["proj_hidden_dim"], hp["proj_dim"], hp["pred_hidden_dim"])
        criterion = NegativeCosineSimilarity()
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    lr = BASE_LR * batch / 256
    # Same optimizer class and settings as ours (torch SGD, momentum 0.9, no nesterov).
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    x0, x1 = views

    if method_name == "simclr":

        def step(i: int) -> None:
            current = cosine_schedule(i, total_steps, lr, 0.0)
            for group in optimizer.param_groups:
                group["lr"] = current
            with _autocast(device):
                z0 = model(x0)
                z1 = model(x1)
                loss = criterion(z0, z1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    else:
        base = hp["momentum_base"]

        def step(i: int) -> None:
            current = cosine_schedule(i, total_steps, lr, 0.0)
            for group in optimizer.param_groups:
                group["lr"] = current
            m = cosine_schedule(i, total_steps, base, 1.0)
            update_momentum(model.backbone, model.backbone_momentum, m=m)
            update_momentum(model.projection_head, model.projection_head_momentum, m=m)
            with _autocast(device):
                p0 = model(x0)
                z0 = model.forward_momentum(x0)
                p1 = model(x1)
                z1 = model.forward_momentum(x1)
                loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return model, step


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], None], start: int, n: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for i in range(start, start + n):
        step(i)
    _sync(device)
    return time.perf_counter() - t0


def chunks(total: int, rounds: int) -> list[int]:
    rounds = max(1, min(rounds, total))
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def make_views(method_name: str, shape: dict[str, Any], batch: int, device: torch.device, seed: int) -> list[torch.Tensor]:
    """Two views made once with sslaug's own pipelines from a random uint8 batch."""
    g = torch.Generator().manual_seed(seed)
    size = shape["image_size"]
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    torch.manual_seed(seed)
    pipelines = [ViewPipeline(r, size).to(device) for r in recipe_for(method_name, shape["views"][method_name])]
    views = [p(images) for p in pipelines]
    if device.type == "cuda":
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    return views


def bench_augment(method_name: str, shape: dict[str, Any], batch: int, device: torch.device, seed: int,
                  iters: int, lightly_images: int) -> dict[str, Any]:
    """Ours: batched kornia views (both views) per uint8 batch. Lightly (context only):
    per-image torchvision transform, both views, one process."""
    size = shape["image_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    pipelines = [ViewPipeline(r, size).to(device) for r in recipe_for(method_name, shape["views"][method_name])]
    for p in pipelines:  # warm-up
        p(images)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        for p in pipelines:
            p(images)
    _sync(device)
    ours_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "method": method_name,
        "shape": f"{size}px b{batch}",
        "ours_images_per_s": iters * batch / ours_s,
        "ours_batches": iters,
    }
    if lightly_images > 0:
        from PIL import Image

        if method_name == "simclr":
            from lightly.transforms import SimCLRTransform

            transform = SimCLRTransform(input_size=size, gaussian_blur=0.0)
        else:
            from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

            transform = BYOLTransform(
                view_1_transform=BYOLView1Transform(input_size=size, gaussian_blur=0.0),
                view_2_transform=BYOLView2Transform(input_size=size, gaussian_blur=0.0, solarization_prob=0.0),
            )
        pils = [Image.fromarray(images[i % batch].permute(1, 2, 0).cpu().numpy()) for i in range(lightly_images)]
        transform(pils[0])
        t0 = time.perf_counter()
        for im in pils:
            transform(im)
        out["lightly_per_image_1proc_images_per_s"] = lightly_images / (time.perf_counter() - t0)
    return out


def profile_step(name: str, step: Callable[[int], None], start: int, device: torch.device, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(start, start + 2):
            step(i)
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"--- profile: {name} (2 steps) ---\n" + prof.key_averages().table(sort_by=sort, row_limit=rows)


def bench_pair(method_name: str, shape_name: str, batch: int, steps: int, warmup: int, rounds: int,
               device: torch.device, seed: int, profile_rows: int) -> dict[str, Any]:
    shape = SHAPES[shape_name]
    views = make_views(method_name, shape, batch, device, seed)
    total = warmup + steps + (2 if profile_rows else 0) + 1
    _, ours = make_ours(method_name, shape, batch, device, seed, views, total)
    _, theirs = make_lightly(method_name, shape, batch, device, seed, views, total)
    # warm-up, interleaved too
    for i in range(warmup):
        ours(i)
        theirs(i)
    _sync(device)
    ours_t: list[float] = []
    theirs_t: list[float] = []
    sizes = chunks(steps, rounds)
    start = warmup
    for n in sizes:  # A B A B ...
        ours_t.append(time_steps(ours, start, n, device))
        theirs_t.append(time_steps(theirs, start, n, device))
        start += n
    if profile_rows:
        print(profile_step(f"ours {method_name} {shape_name}", ours, start, device, profile_rows), flush=True)
        print(profile_step(f"lightly {method_name} {shape_name}", theirs, start, device, profile_rows), flush=True)
    o_sps = steps / sum(ours_t)
    l_sps = steps / sum(theirs_t)
    o_best = max(n / t for n, t in zip(sizes, ours_t))
    l_best = max(n / t for n, t in zip(sizes, theirs_t))
    return {
        "method": method_name,
        "shape": shape_name,
        "backbone": shape["backbone"],
        "image_size": shape["image_size"],
        "batch_size": batch,
        "steps": steps,
        "warmup": warmup,
        "rounds": sizes,
        "ours_round_seconds": ours_t,
        "lightly_round_seconds": theirs_t,
        "ours_steps_per_s": o_sps,
        "ours_images_per_s": o_sps * batch,
        "lightly_steps_per_s": l_sps,
        "lightly_images_per_s": l_sps * batch,
        "ratio_ours_over_lightly": o_sps / l_sps,
        "ratio_best_round": o_best / l_best,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="simclr,byol", help="comma list of simclr,byol")
    p.add_argument("--shapes", default="mini,cifar", help="comma list of mini,cifar")
    p.add_argument("--mini-batch-size", type=int, default=SHAPES["mini"]["batch_size"])
    p.add_argument("--batch-size", type=int, default=None,
                   help="cifar batch size (default: 64 on CPU, 256 on CUDA; the real shape is 256)")
    p.add_argument("--mini-steps", type=int, default=20)
    p.add_argument("--mini-warmup", type=int, default=5)
    p.add_argument("--cifar-steps", type=int, default=3)
    p.add_argument("--cifar-warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=4, help="timed steps are split into this many A/B chunks")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1, as config/scales/mini.yaml; 0: torch's default). "
                        "On a CPU shared with other jobs, >1 thread can be many times slower (OpenMP oversubscription)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--aug-iters", type=int, default=5, help="batches for the augmentation line (0: skip)")
    p.add_argument("--lightly-aug-images", type=int, default=256,
                   help="images for lightly's per-image transform context line (0: skip)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="also profile 2 steps of each side with torch.profiler, print ROWS top ops")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu")
    cifar_batch = args.batch_size or (256 if device.type == "cuda" else 64)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    methods = [m for m in args.methods.split(",") if m]
    shapes = [s for s in args.shapes.split(",") if s]
    for m in methods:
        if m not in ("simclr", "byol"):
            p.error(f"unknown method {m!r}")
    for s in shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}")

    dev_desc = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} logical cores)"
    meta = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": dev_desc,
        "dtype": "bf16 autocast + channels_last" if device.type == "cuda" else "fp32",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "step": "schedule + fwd(both views) + loss + zero_grad + backward + SGD step + EMA update; pre-augmented views",
    }
    try:
        import lightly

        meta["lightly"] = lightly.__version__
    except Exception:  # pragma: no cover
        pass
    print(f"# {meta['date']}  device={dev_desc}  dtype={meta['dtype']}  threads={meta['torch_threads']}  "
          f"torch={meta['torch']}  lightly={meta.get('lightly')}", flush=True)

    t_start = time.perf_counter()
    results = []
    for shape_name in shapes:
        batch = args.mini_batch_size if shape_name == "mini" else cifar_batch
        steps = args.mini_steps if shape_name == "mini" else args.cifar_steps
        warmup = args.mini_warmup if shape_name == "mini" else args.cifar_warmup
        for m in methods:
            r = bench_pair(m, shape_name, batch, steps, warmup, args.rounds, device, args.seed, args.profile)
            results.append(r)
            print(f"  {m:6s} {shape_name:5s} b{batch}: ours {r['ours_steps_per_s']:.3f} st/s, "
                  f"lightly {r['lightly_steps_per_s']:.3f} st/s, ratio {r['ratio_ours_over_lightly']:.3f} "
                  f"(best-round ratio {r['ratio_best_round']:.3f})", flush=True)

    augment = []
    if args.aug_iters > 0:
        for shape_name in shapes:
            batch = args.mini_batch_size if shape_name == "mini" else cifar_batch
            for m in methods:
                a = bench_augment(m, SHAPES[shape_name], batch, device, args.seed, args.aug_iters, args.lightly_aug_images)
                a["shape"] = f"{shape_name} ({a['shape']})"
                augment.append(a)

    hdr = f"{'method':7s} {'shape':14s} {'ours st/s':>10s} {'ours img/s':>11s} {'lightly st/s':>13s} {'lightly img/s':>14s} {'ours/lightly':>13s}"
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        shape = f"{r['shape']} b{r['batch_size']}"
        print(f"{r['method']:7s} {shape:14s} {r['ours_steps_per_s']:10.3f} {r['ours_images_per_s']:11.1f} "
              f"{r['lightly_steps_per_s']:13.3f} {r['lightly_images_per_s']:14.1f} {r['ratio_ours_over_lightly']:13.3f}")
    if augment:
        print()
        print("augmentation (2 views per image; not part of the timed step):")
        for a in augment:
            line = f"  {a['method']:7s} {a['shape']:22s} ours batched kornia: {a['ours_images_per_s']:9.1f} img/s"
            if "lightly_per_image_1proc_images_per_s" in a:
                line += f"   lightly per-image torchvision, 1 process: {a['lightly_per_image_1proc_images_per_s']:8.1f} img/s"
            print(line)
    meta["wall_seconds"] = time.perf_counter() - t_start
    print(f"\n# images = batch images per step (each step processes 2 views of each); wall {meta['wall_seconds']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results, "augmentation": augment}, indent=2))
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

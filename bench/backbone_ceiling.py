#!/usr/bin/env python
"""The raw backbone's forward + backward throughput (the ceiling) and sslaug's step's share of it.

A benchmark, not a test. Per shape (mini, cifar, imagenet; see ``bench/_steps.py``) it
times, interleaved in ``--rounds`` rounds after a warm-up:

* raw     = the bare backbone, forward + backward of both views (no heads, loss or
            optimiser): the most images/s any SSL step on this backbone can reach;
* ours    = sslaug's real training step (``Trainer.fit``, see ``bench/_steps.py``) of
            each method in ``--methods``, on the same views;

and prints images/s and share = ours / raw (median and range of per-round ratios).

The backbone work differs per method, so ``bound`` = the share a step with free heads,
loss and optimiser would reach: 6 / backbone units, counting a forward as 1 and a
forward + backward as 3 (raw: 2 views x 3 = 6). SimCLR, SimSiam, Barlow Twins: 6 (bound
1); MoCo v3, BYOL, DINO add 2 target forwards: 8 (0.75); MoCo v2 runs the query (with
gradient) on one view and the key on the other: 4 (1.5), symmetric 8 (0.75). The GPU
target is ours >= 85 % of the bound.

Example (about 1 min at mini on one CPU thread):
    .venv/bin/python bench/backbone_ceiling.py --shapes mini --out bench/backbone_ceiling_mini_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import _timing as T
import torch
from _steps import (
    BASE_METHODS,
    SHAPES,
    Shape,
    build_ours,
    build_raw_backbone,
    make_views,
    method_settings,
    ours_available,
    shape_batch,
)

STEPS = {"mini": (4, 50), "cifar": (1, 20), "imagenet": (1, 10)}
WARMUP = {"mini": (2, 10), "cifar": (1, 5), "imagenet": (1, 5)}


def backbone_units(method: str, hparams: dict[str, Any]) -> int:
    """Backbone work per step in forward units (forward + backward = 3): views with gradient
    x 3 + momentum-encoder forwards. The raw ceiling is 2 views x 3 = 6."""
    if method == "mocov2":  # query on one view, key on the other; symmetric: both ways
        return 8 if hparams.get("symmetric") else 4
    return 6 + (2 if method in ("mocov3", "byol", "dino") else 0)


def bench_shape(shape: Shape, methods: list[str], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    batch = shape_batch(shape, device, args.batch_size if shape.name != "mini" else None)
    gpu = int(device.type == "cuda")
    steps = args.steps or STEPS[shape.name][gpu]
    warmup = args.warmup if args.warmup is not None else WARMUP[shape.name][gpu]
    views = make_views("simclr", {}, shape, batch, device, args.seed, args.cl)
    sides = {"raw": build_raw_backbone(shape, device, args.seed, views, args.bf16, args.cl, args.compile)}
    skipped: dict[str, str] = {}
    bounds: dict[str, float] = {}
    for method in methods:
        reason = ours_available(method, shape)
        if reason is not None:
            skipped[method] = reason
            continue
        trainer, run = build_ours(method, shape, batch, device, args.seed, views, args.bf16, args.cl, args.compile)
        if trainer.method.num_views > 2:
            skipped[method] = f"takes {trainer.method.num_views} views (multi-crop): not in this harness"
            continue
        sides[method] = run
        hparams, _ = method_settings(method, shape) or ({}, {})
        bounds[method] = 6 / backbone_units(method, hparams)
    seconds = T.interleaved(sides, steps, args.rounds, warmup, device)
    out: dict[str, Any] = {
        "shape": shape.name,
        "backbone": shape.backbone,
        "image_size": shape.image_size,
        "batch_size": batch,
        "steps_per_round": steps,
        "warmup": warmup,
        "raw_images_per_s": T.rate_stats(seconds["raw"], steps * batch),
        "methods": {},
        "skipped": skipped,
    }
    for method in sides:
        if method == "raw":
            continue
        out["methods"][method] = {
            "ours_images_per_s": T.rate_stats(seconds[method], steps * batch),
            "share_of_raw": T.ratio_stats(seconds[method], seconds["raw"]),
            "bound": bounds[method],
        }
    del sides
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(BASE_METHODS), help=f"comma list of {','.join(BASE_METHODS)}")
    p.add_argument("--shapes", default="mini,cifar,imagenet", help=f"comma list of {','.join(SHAPES)}")
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
    bad = [m for m in methods if m not in BASE_METHODS] + [s for s in shapes if s not in SHAPES]
    if bad:
        p.error(f"unknown method(s)/shape(s) {bad}; methods {BASE_METHODS}, shapes {sorted(SHAPES)}")
    device = T.setup_device(args)
    meta = T.describe(device, args, raw="backbone forward + backward of 2 views, no heads / loss / optimiser")
    T.print_header(meta)
    t0 = time.perf_counter()
    results = [bench_shape(SHAPES[s], methods, args, device) for s in shapes]
    meta["wall_seconds"] = time.perf_counter() - t0
    rows = []
    for r in results:
        shape = f"{r['shape']} b{r['batch_size']}"
        rows.append(["raw backbone fwd+bwd", shape, T.fmt_rate(r["raw_images_per_s"]), "1", "1"])
        for method, m in r["methods"].items():
            s = m["share_of_raw"]
            rows.append(
                [
                    method,
                    shape,
                    T.fmt_rate(m["ours_images_per_s"]),
                    f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]",
                    f"{m['bound']:.3f}",
                ]
            )
        for method, reason in r["skipped"].items():
            rows.append([method, shape, "not measured", reason, ""])
    T.print_table(["step", "shape", "img/s", "share of raw", "bound"], rows)
    print(f"# median [min-max] over {args.rounds} interleaved rounds; wall {meta['wall_seconds']:.0f} s", flush=True)
    T.write_json(args.out, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""SASSL: stylization images/s on a batch and the training-step overhead vs no stylization.

A benchmark, not a test. Per shape it times, interleaved in ``--rounds`` rounds:

* stylize       = ``StyleAugment`` (in-batch styles, p = 0.8, alpha / beta ~ U(0.1, 0.3))
                  on a batch of crops in [0, 1]: images/s of the batch;
* predictor     = ``Stylizer.embed_style`` on the whole batch (component, for the split);
* transformer   = ``StyleTransformer`` on 80 % of the batch (component);
* step          = sslaug's real training step (``Trainer.fit``, see ``bench/_steps.py``) of
                  MoCo v2 (SASSL Table 1's base) with the run's view maker making the views
                  from a uint8 batch every step, without stylization;
* step + SASSL  = the same with ``ViewMaker(..., style=StyleAugment)``, as
                  ``build_view_maker`` builds it for augmentation ``sassl``.

Shapes: ``mini`` (tiny convnet, 32 px, b128, the mini scale's tiny random stylizer),
``96`` (ResNet-18, 96 px, CPU batch 16) and ``224`` (ResNet-50, 224 px, CPU batch 8) with
the full-size Stylizer (InceptionV3 style predictor at 256 px + full-width transformer,
Magenta's architecture) with random weights (the cost does not depend on the weights).

Example (about 2-3 min on one CPU thread):
    .venv/bin/python bench/sassl_overhead.py --shapes mini,96 --out bench/sassl_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import _timing as T
import torch
from _steps import SHAPES, Shape, build_ours, method_settings

from sslaug.augment.sassl import SASSLConfig, StyleAugment
from sslaug.augment.stylizer import StylizerConfig, build_stylizer
from sslaug.augment.view_maker import ViewMaker
from sslaug.augment.views import ViewPipeline, recipe_for

#: name -> (shape for the backbone / heads, image size, CPU batch, CUDA batch, tiny stylizer)
SASSL_SHAPES: dict[str, tuple[Shape, int, int, int, bool]] = {
    "mini": (SHAPES["mini"], 32, 128, 128, True),
    "96": (Shape("96", "resnet18", 96, 256, 16, "cifar", "ResNet-18, 96 px"), 96, 16, 256, False),
    "224": (SHAPES["imagenet"], 224, 8, 256, False),
}
METHOD = "mocov2"


def bench_shape(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    shape, size, cpu_batch, gpu_batch, tiny = SASSL_SHAPES[name]
    batch = args.batch_size or (gpu_batch if device.type == "cuda" else cpu_batch)
    steps = args.steps or (1 if device.type == "cpu" and name != "mini" else 4 if device.type == "cpu" else 20)
    stylizer = build_stylizer(StylizerConfig(tiny=tiny)).eval().requires_grad_(False)
    style = StyleAugment(stylizer, SASSLConfig()).to(device)
    _, overrides = method_settings(METHOD, shape) or ({}, {})
    recipes = recipe_for(METHOD, overrides)
    plain = ViewMaker([ViewPipeline(r, size) for r in recipes])
    sassl = ViewMaker([ViewPipeline(r, size) for r in recipes], style=style)
    torch.manual_seed(args.seed)
    crops = torch.rand(batch, 3, size, size, device=device)
    chosen = max(1, round(0.8 * batch))
    z = torch.randn(chosen, stylizer.style_dim, device=device)

    def stylize(start: int, n: int) -> None:
        for _ in range(n):
            style(crops)

    def predictor(start: int, n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                stylizer.embed_style(crops)

    def transformer(start: int, n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                stylizer.transformer(crops[:chosen], z)

    sides: dict[str, T.Side] = {"stylize": stylize, "predictor": predictor, "transformer": transformer}
    for label, maker in (("step", plain), ("step + SASSL", sassl)):
        trainer, run = build_ours(METHOD, shape, batch, device, args.seed, [], args.bf16, args.cl, args.compile)
        trainer.view_maker = maker.to(device)  # the real view maker: views made every step
        sides[label] = run
    seconds = T.interleaved(sides, steps, args.rounds, 1, device)
    stats = {k: T.rate_stats(s, steps * batch) for k, s in seconds.items()}
    overhead = T.ratio_stats(seconds["step"], seconds["step + SASSL"])  # rate(step) / rate(step+SASSL)
    out = {
        "shape": name,
        "backbone": shape.backbone,
        "image_size": size,
        "batch_size": batch,
        "steps_per_round": steps,
        "stylizer": "tiny (mini scale), random weights" if tiny else "full (InceptionV3 + Magenta transformer), random",
        "method": METHOD,
        "images_per_s": stats,
        "step_time_ratio_sassl_over_plain": overhead,
        "predictor_passes_per_stylize": 1 + 0.8,
    }
    del sides
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="mini,96", help=f"comma list of {','.join(SASSL_SHAPES)}")
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch (default: CPU 128 / 16 / 8, CUDA 128 / 256 / 256)"
    )
    p.add_argument("--steps", type=int, default=0, help="steps per round (default: CPU 4 at mini else 1, CUDA 20)")
    T.add_device_args(p)
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SASSL_SHAPES:
            p.error(f"--shapes: unknown shape {s!r}; choose from {sorted(SASSL_SHAPES)}")
    device = T.setup_device(args)
    meta = T.describe(device, args, sassl="in-batch styles, p 0.8, alpha/beta U(0.1, 0.3); MoCo v2 step")
    T.print_header(meta)
    t0 = time.perf_counter()
    results = [bench_shape(s, args, device) for s in shapes]
    meta["wall_seconds"] = time.perf_counter() - t0
    rows = []
    for r in results:
        label = f"{r['shape']} ({r['backbone']}, {r['image_size']} px, b{r['batch_size']})"
        for name, stats in r["images_per_s"].items():
            rows.append([label, name, T.fmt_rate(stats)])
        o = r["step_time_ratio_sassl_over_plain"]
        rows.append([label, "step time, SASSL / plain", f"{o['median']:.2f} [{o['min']:.2f}-{o['max']:.2f}]"])
    T.print_table(["shape", "what", "images/s (median [min-max])"], rows)
    print(f"# {args.rounds} interleaved rounds; wall {meta['wall_seconds']:.0f} s", flush=True)
    T.write_json(args.out, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Seconds per generated view of the unCLIP view generator (``sslaug.augment.generative_views``).

A benchmark, not a test. It times ``UnclipViewGenerator.generate`` (the code the
``precompute_generative_views`` rule runs) on a uint8 batch, in ``--rounds`` rounds per
setting, and prints seconds per view (median [min-max]).

With ``--model tiny-random`` (the default; nothing can be downloaded here) the pipeline is
the tiny random-weight ``StableUnCLIPImg2ImgPipeline`` of the mini scale (a 2-block UNet
of 32/64 channels, a 2-layer CLIP vision encoder): its figures are NOT representative of
Stable Diffusion 2.1 unCLIP, whose UNet is ~900x larger; they only show the pipeline's
fixed overheads. On a GPU node with the real model, pass ``--model PATH`` (a local copy of
stabilityai/stable-diffusion-2-1-unclip-small) to measure the real cost.

Settings (name: image size, denoising steps): ``mini`` = 32 px, 2 steps (mini.yaml);
``paper_steps`` = 64 px, the paper's 10 steps (IMPLEMENTATION_NOTES: DDIM 10 steps,
guidance 10); ``paper`` = 224 px, 10 steps, for a real ``--model`` only (the tiny model's
VAE downsamples 2x, so at 224 px its UNet would attend over 112 x 112 tokens: minutes per
view spent in a toy's attention, meaningless).

Example (well under a minute on one CPU thread):
    .venv/bin/python bench/unclip_views.py --out bench/unclip_views_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time

import _timing as T
import torch
from _steps import random_images

from sslaug.augment.generative_views import TINY_RANDOM, UnclipViewGenerator, ViewConfig

#: name -> (image size, denoising steps). The tiny model's VAE downsamples only 2x, so its
#: UNet attends over (size / 2)^2 tokens: 224 px would time quadratic attention of a toy.
SETTINGS = {"mini": (32, 2), "paper_steps": (64, 10), "paper": (224, 10)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=TINY_RANDOM, help="unCLIP model directory or 'tiny-random'")
    p.add_argument("--settings", default="mini,paper_steps", help=f"comma list of {','.join(SETTINGS)}")
    p.add_argument("--images", type=int, default=4, help="images per round")
    p.add_argument("--views", type=int, default=2, help="views per image")
    p.add_argument("--batch-size", type=int, default=8, help="pipeline batch (views generated together)")
    T.add_device_args(p)
    args = p.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    for s in settings:
        if s not in SETTINGS:
            p.error(f"--settings: unknown {s!r}; choose from {sorted(SETTINGS)}")
    device = T.setup_device(args)
    tiny = args.model == TINY_RANDOM
    if tiny and "paper" in settings:
        p.error("--settings paper (224 px) needs a real --model: the tiny model would time a toy's attention")
    meta = T.describe(
        device,
        args,
        model=args.model,
        representative=not tiny,
        note="tiny random-weight pipeline: NOT representative of SD 2.1 unCLIP" if tiny else "real model",
    )
    T.print_header(meta)
    t0 = time.perf_counter()
    sides: dict[str, T.Side] = {}
    for name in settings:
        size, steps = SETTINGS[name]
        config = ViewConfig(model=args.model, views=args.views, image_size=size, num_inference_steps=steps)
        generator = UnclipViewGenerator(config, device, batch_size=args.batch_size)
        images = random_images(args.images, size, torch.device("cpu"), args.seed)

        def run(start: int, n: int, generator: UnclipViewGenerator = generator, images: torch.Tensor = images) -> None:
            for _ in range(n):
                generator.generate(images, list(range(images.shape[0])))

        sides[name] = run
    seconds = T.interleaved(sides, 1, args.rounds, 1, device)
    views = args.images * args.views
    results = {}
    rows = []
    for name, secs in seconds.items():
        per_view = [s / views for s in secs]
        stats = T.rate_stats(secs, views)  # views/s
        stats["seconds_per_view"] = {
            "median": sorted(per_view)[len(per_view) // 2],
            "min": min(per_view),
            "max": max(per_view),
        }
        results[name] = {"image_size": SETTINGS[name][0], "steps": SETTINGS[name][1], "views_per_round": views, **stats}
        spv = stats["seconds_per_view"]
        rows.append(
            [
                name,
                f"{SETTINGS[name][0]} px",
                SETTINGS[name][1],
                args.model,
                f"{spv['median']:.4f} [{spv['min']:.4f}-{spv['max']:.4f}]",
            ]
        )
    meta["wall_seconds"] = time.perf_counter() - t0
    T.print_table(["setting", "size", "steps", "model", "seconds per view (median [min-max])"], rows)
    if tiny:
        print("# tiny random-weight pipeline: NOT representative of the real unCLIP model", flush=True)
    T.write_json(args.out, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

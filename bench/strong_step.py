#!/usr/bin/env python
"""Step time of an augmentation method beside its base method on the mini shape (tiny
convnet, 32 px, batch 128): CLSA-Single vs MoCo v2 (``--pair clsa``, CLSA paper) or
BYOL+MSR vs BYOL with aggressive views (``--pair msr``, MSR Table 7: "under 9% more").

A benchmark, not a test: one run prints both step times and their ratio variant / base.

Two timings, each interleaved A B A B ... in ``--rounds`` chunks after a warm-up of both:

* model step, on views made once before timing (as bench/pretrain_throughput.py):
  schedule + forward + loss + zero_grad + backward + SGD step + after_step (EMA, enqueue).
  MoCo v2: query + key view. CLSA-Single: the same plus one 14 px strong query (96 px at
  224, scaled to 32 px) and its DDM loss.
* full step = the view maker (uint8 batch -> views, batched kornia) + the model step.
  CLSA's view maker adds the strong view: MoCo v2 colour pipeline + 5 ops of the strong pool.

Both sides are built as the pretraining entry point builds them (``run_spec`` of the mini
scale -> ``build_view_maker`` / ``build_method``; optimiser as ``Trainer``), same seed,
fp32 on CPU (bf16 autocast + channels_last on CUDA, as the Trainer).

Example:
    .venv/bin/python bench/strong_step.py --out bench/strong_step_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from _timing import ROOT, cpu_model, time_chunk

from sslaug.engine.pretrain import build_view_maker
from sslaug.engine.trainer import _param_groups, build_optimizer, lr_at
from sslaug.methods import build_method
from sslaug.models.backbones import build_backbone
from sslaug.plan import PretrainRun, run_spec

CLSA_SINGLE = (("crops", "single"), ("key", "weak"), ("loss", "ddm"), ("query", "weak"))
#: pair -> (method, (base augmentation, options, label), (variant augmentation, options, label))
PAIRS = {
    "clsa": ("mocov2", ("standard", (), "MoCo v2"), ("clsa", CLSA_SINGLE, "CLSA-Single")),
    "msr": ("byol", ("standard", (("recipe", "aggressive"),), "BYOL (AA)"), ("msr", (("beta_base", 0.4),), "BYOL+MSR")),
}


def make_side(
    method_name: str, augmentation: str, options: tuple, batch: int, device: torch.device, seed: int, total: int
) -> dict[str, Any]:
    scale = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())
    spec = run_spec(PretrainRun(method_name, augmentation, options, "tiny", "mini", 1, seed), "mini", scale)
    train = spec["train"]
    torch.manual_seed(seed)
    backbone = build_backbone(spec["backbone"], image_size=spec["image_size"])
    method = build_method(method_name, backbone, spec["hparams"], augmentation, {**spec.get("strong", {}), **spec["options"]})
    method = method.to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    method.train()
    maker = build_view_maker(spec, batch, None, None, device).to(device)
    lr = float(train["base_lr"]) * batch / 256
    optimizer = build_optimizer(
        _param_groups(method, float(train["weight_decay"]), True), "sgd", lr=lr, momentum=0.9, fused=device.type == "cuda"
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    indices = torch.arange(batch, device=device)
    fixed_views = maker(images, indices, 0)

    def model_step(i: int, views: list[torch.Tensor] | None = None) -> None:
        views = fixed_views if views is None else views
        if device.type == "cuda":
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i, total, 0, lr, 0.0)
        with autocast:
            loss, _ = method(views, i / total)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(i / total)

    def full_step(i: int) -> None:
        model_step(i, maker(images, indices, 0))

    return {"model": model_step, "full": full_step, "views": [tuple(v.shape) for v in fixed_views]}


def _chunk(step: Any) -> Any:
    """``step(i)`` as a bench side ``run(start, n)`` (see ``_timing``)."""

    def run(start: int, n: int) -> None:
        for i in range(start, start + n):
            step(i)

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=sorted(PAIRS), default="clsa")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (mini.yaml: 1; 0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    total = args.warmup + args.steps + 1
    method_name, (base_aug, base_opts, base_label), (var_aug, var_opts, var_label) = PAIRS[args.pair]
    sides = {
        "base": make_side(method_name, base_aug, base_opts, args.batch_size, device, args.seed, total),
        "variant": make_side(method_name, var_aug, var_opts, args.batch_size, device, args.seed, total),
    }
    dev_desc = torch.cuda.get_device_name(device) if use_cuda else f"CPU: {cpu_model()}"
    meta = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": dev_desc,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "views": {name: side["views"] for name, side in sides.items()},
    }
    print(f"# {meta['date']}  device={dev_desc}  threads={meta['torch_threads']}  torch={meta['torch']}", flush=True)
    results = {}
    base, extra = divmod(args.steps, args.rounds)
    chunks = [base + (1 if r < extra else 0) for r in range(args.rounds)]
    for kind in ("model", "full"):
        for i in range(args.warmup):
            for side in sides.values():
                side[kind](i)
        seconds = {name: [] for name in sides}
        start = args.warmup
        for n in chunks:
            for name, side in sides.items():
                seconds[name].append(time_chunk(_chunk(side[kind]), start, n, device))
            start += n
        ms = {name: 1000 * sum(t) / args.steps for name, t in seconds.items()}
        ratio = ms["variant"] / ms["base"]
        per_round = [c / m for c, m in zip(seconds["variant"], seconds["base"])]
        median = statistics.median(per_round)
        results[kind] = {"base": base_label, "variant": var_label, "base_ms": ms["base"], "variant_ms": ms["variant"],
                         "ratio": ratio, "ratio_median_round": median, "ratio_per_round": per_round, "rounds": chunks}
        print(f"  {kind:5s} step: {base_label} {ms['base']:7.1f} ms, {var_label} {ms['variant']:7.1f} ms, "
              f"ratio {var_label} / {base_label} = {ratio:.2f} (median round {median:.2f}, "
              f"range {min(per_round):.2f}-{max(per_round):.2f})", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "batch_size": args.batch_size, "steps": args.steps,
                                        "warmup": args.warmup, "results": results}, indent=2))
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

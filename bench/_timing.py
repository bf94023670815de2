"""Timing helpers shared by every bench script (not a benchmark itself).

One measurement = several *sides* (e.g. ours, lightly, raw backbone) timed in rounds,
interleaved A B C A B C ..., after a warm-up of each side, so that drift in machine load
hits every side alike. A side is a callable ``run(start, n)`` that performs ``n`` steps
numbered ``start .. start + n - 1``; the device is synchronised before each timer read.
Each side reports the median per-round rate and the spread (min-max over rounds), and a
pair of sides the median and range of the per-round ratio of their rates.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(ROOT / "src"))

#: ``run(start, n)``: perform steps ``start .. start + n - 1`` of one side.
Side = Callable[[int, int], None]


# --------------------------------------------------------------------------- device set-up


def add_device_args(parser: argparse.ArgumentParser, threads_default: int = 1) -> None:
    """The flags every script shares: device, threads, GPU dtype/layout/compile, seed, rounds, output."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=threads_default,
        help="torch.set_num_threads (0: torch's default). On a CPU shared with other jobs, more than one "
        "thread can be many times slower (OpenMP oversubscription), hence 1",
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="CUDA: no bf16 autocast (default: bf16, as sslaug's Trainer); CPU: always fp32",
    )
    parser.add_argument(
        "--no-channels-last", action="store_true", help="CUDA: contiguous NCHW (default: channels_last, as the Trainer)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (ours: TrainConfig.compile)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the raw figures as JSON here")


def setup_device(args: argparse.Namespace) -> torch.device:
    """Threads, device and cuDNN autotuning from the shared flags; fills ``args.bf16`` / ``args.cl``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    # The Trainer uses bf16 autocast and channels_last on CUDA only; every side follows it.
    args.bf16 = use_cuda and not args.fp32
    args.cl = use_cuda and not args.no_channels_last
    return device


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast on the device, or nothing (fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(device: torch.device, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Everything a reader needs to compare figures: date, device, software, settings, command."""
    meta: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "dtype": "bf16 autocast" if getattr(args, "bf16", False) else "fp32",
        "channels_last": bool(getattr(args, "cl", False)),
        "compile": bool(getattr(args, "compile", False)),
        "rounds": getattr(args, "rounds", None),
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        import lightly

        meta["lightly"] = lightly.__version__
    except ImportError:
        meta["lightly"] = None
    meta.update(extra)
    return meta


def print_header(meta: dict[str, Any]) -> None:
    print(
        f"# {meta['date']}  device={meta['device']}  cpu={meta['cpu']}  torch={meta['torch']}  "
        f"threads={meta['torch_threads']}  dtype={meta['dtype']}  channels_last={meta['channels_last']}  "
        f"load={meta['load_average_start']}",
        flush=True,
    )


# --------------------------------------------------------------------------- timing


def time_chunk(run: Side, start: int, n: int, device: torch.device) -> float:
    """Seconds of ``run(start, n)``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    run(start, n)
    sync(device)
    return time.perf_counter() - t0


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(
    sides: dict[str, Side], steps_per_round: int, rounds: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Warm every side up (``warmup`` steps each, interleaved), then time ``rounds`` rounds of
    ``steps_per_round`` steps per side, A B C A B C ...; returns seconds per round per side.

    Every side sees the same step numbers, so schedules (lr, EMA momentum) match.
    """
    if warmup:
        for run in sides.values():
            run(0, warmup)
    sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    start = warmup
    for _ in range(rounds):
        for name, run in sides.items():
            seconds[name].append(time_chunk(run, start, steps_per_round, device))
        start += steps_per_round
    return seconds


def rate_stats(round_seconds: Sequence[float], items_per_round: float) -> dict[str, Any]:
    """Per-round rates (items/s): median and spread (min, max, (max - min) / median)."""
    rates = [items_per_round / s for s in round_seconds]
    median = statistics.median(rates)
    return {
        "median": median,
        "min": min(rates),
        "max": max(rates),
        "spread": (max(rates) - min(rates)) / median if median else float("nan"),
        "per_round": rates,
        "round_seconds": list(round_seconds),
    }


def ratio_stats(numerator_seconds: Sequence[float], denominator_seconds: Sequence[float]) -> dict[str, Any]:
    """Rate ratio numerator / denominator per round (adjacent rounds), median and range.

    Rate ratio = denominator seconds / numerator seconds (same work per round on both sides).
    """
    ratios = [d / n for n, d in zip(numerator_seconds, denominator_seconds)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "per_round": ratios}


def fmt_rate(stats: dict[str, Any], digits: int = 1) -> str:
    """``median [min-max]``."""
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}-{stats['max']:.{digits}f}]"


# --------------------------------------------------------------------------- output


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table (markdown-ish, so it can be pasted into RESULTS.md)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines), flush=True)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (a reader never sees half a file)."""
    if path is None:
        return
    from sslaug.io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
    print(f"# wrote {path}", flush=True)

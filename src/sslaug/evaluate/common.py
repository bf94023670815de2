"""What every evaluation entry point shares: spec parsing, CLI, result file, features."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sslaug.augment.views import normalize_uint8
from sslaug.data.formats import DataError
from sslaug.io import atomic_write_json

C = TypeVar("C")


def eval_argument_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every evaluation rule passes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--encoder", required=True, type=Path, help="encoder.pt from pretraining")
    parser.add_argument("--data", required=True, type=Path, help="prepared evaluation dataset")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--spec", default="{}", help="protocol settings (JSON object)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--out", required=True, type=Path, help="metrics.json to write")
    return parser




def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device() -> torch.device:
    """CUDA when present, else CPU (the mini scale runs on CPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA only: CPU autocast is slow and numerically pointless here."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_encoder_path(path: str | Path) -> Path:
    """The encoder checkpoint path, or a ``FileNotFoundError`` that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint not found: {path}")
    return path


def write_result(out: str | Path, protocol: str, metrics: dict[str, float], config: Any,
                 seconds: float, notes: Sequence[str] = (), info: dict[str, Any] | None = None,
                 encoder: str | Path = "", data: str | Path = "") -> dict[str, Any]:
    """Write the protocol's ``metrics.json`` atomically and return its content.

    Same keys as :func:`sslaug.evaluate.common.run_evaluation` writes, plus ``notes``
    (caveats about the numbers) and ``info`` (run facts: steps, sizes, device).
    """
    result = {
        "status": "ok",
        "protocol": protocol,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "config": dataclasses.asdict(config),
        "encoder": str(encoder),
        "data": str(data),
        "seconds": float(seconds),
        "notes": list(notes),
        "info": info or {},
    }
    atomic_write_json(out, result)
    return result


#: Errors caused by the inputs (bad spec, missing files, unsupported set-ups): one line, exit 1
#: (the convention of :func:`sslaug.evaluate.common.run_evaluation`).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotImplementedError, DataError)


def cli_main(protocol: str, description: str, run: Callable[..., dict[str, Any]],
             argv: Sequence[str] | None, test_split: str) -> int:
    """The CLI of every evaluation entry point: parse, run, one-line error and exit 1 on bad input."""
    parser = eval_argument_parser(description)
    parser.set_defaults(test_split=test_split)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args.encoder, args.data, args.train_split, args.test_split, args.spec, args.seed, args.out)
    except USER_ERRORS as e:
        print(f"{protocol}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result["metrics"]))
    return 0


def infinite_batches(loader: DataLoader) -> Iterator[Any]:
    """Yield batches forever; each pass re-shuffles from the loader's own seeded generator."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training split yields no batches (empty dataset?)")


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images_uint8: torch.Tensor, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """Frozen-encoder features of uint8 NCHW images (no augmentation), as float32 on CPU."""
    encoder.eval().to(device)
    chunks = []
    for start in range(0, images_uint8.shape[0], batch_size):
        batch = images_uint8[start : start + batch_size].to(device)
        with autocast(device, True):
            chunks.append(encoder(normalize_uint8(batch)).float().cpu())
    return torch.cat(chunks)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent, as ``{"top1": .., "top5": ..}`` (k capped at the class count)."""
    result = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == labels[:, None]).any(dim=1)
        result[f"top{k}"] = 100.0 * hit.float().mean().item()
    # Mean per-class accuracy: the SimCLR transfer protocol's metric for Pets, Aircraft, ...
    predicted = logits.argmax(dim=1)
    per_class = [(predicted[labels == c] == c).float().mean() for c in labels.unique()]
    result["mean_class_acc"] = 100.0 * torch.stack(per_class).mean().item()
    result["map"] = mean_average_precision(logits, labels)
    return result


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro-averaged one-vs-rest average precision (percent) of class scores ``[N, C]``,
    over the classes present in ``labels``; for single-label sets stated as mAP (VOC2007 in
    Rescue Table 1 at the mini scale)."""
    aps = []
    for c in labels.unique().tolist():
        order = scores[:, c].argsort(descending=True)
        hits = (labels[order] == c).float()
        precision_at_hit = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append((precision_at_hit * hits).sum() / hits.sum())
    return 100.0 * torch.stack(aps).mean().item()

"""What every evaluation entry point shares: its CLI, config parsing, feature extraction."""

from __future__ import annotations

import argparse
import logging
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from sslaug.augment.views import normalize_uint8
from sslaug.data.formats import DataError
from sslaug.io import atomic_write_json

log = logging.getLogger("sslaug.evaluate")
ConfigT = TypeVar("ConfigT")


def config_from_spec(cls: type[ConfigT], spec: dict[str, Any], where: str) -> ConfigT:
    """Instantiate a config dataclass from a spec mapping, naming any unknown key."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {where}; known: {sorted(known)}")
    return cls(**spec)


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


def run_evaluation(
    protocol: str,
    description: str,
    config_cls: type[ConfigT],
    evaluate: Callable[[argparse.Namespace, ConfigT], dict[str, float]],
    argv: list[str] | None = None,
) -> int:
    """Parse the CLI, run ``evaluate``, write ``{"status", "protocol", "metrics", "config"}`` atomically."""
    args = eval_argument_parser(description).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    try:
        config = config_from_spec(config_cls, json.loads(args.spec), f"protocol {protocol}")
        metrics = evaluate(args, config)
    except (ValueError, KeyError, FileNotFoundError, NotImplementedError, DataError) as err:
        log.error("%s: %s", type(err).__name__, err)
        return 1
    result = {
        "status": "ok",
        "protocol": protocol,
        "metrics": metrics,
        "config": asdict(config),  # type: ignore[call-overload]
        "encoder": str(args.encoder),
        "data": str(args.data),
        "seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write_json(args.out, result)
    log.info("%s: %s", protocol, metrics)
    return 0


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images_uint8: torch.Tensor, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """Frozen-encoder features of uint8 NCHW images (no augmentation), as float32 on CPU."""
    encoder.eval().to(device)
    chunks = []
    for start in range(0, images_uint8.shape[0], batch_size):
        batch = images_uint8[start : start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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
    return result


def device_for_eval() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def exit_with(code: int) -> None:
    sys.exit(code)

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
from torch.utils.data import DataLoader, Subset

from sslaug.augment.views import normalize_uint8
from sslaug.data.formats import EVAL_CROP_RATIO, DataError, load_array_split, open_classification, read_meta
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


#: Storage types of frozen features (``feature_dtype`` of the probes' configs).
FEATURE_DTYPES = {"float32": torch.float32, "float16": torch.float16}

#: Images per encoder forward when extracting features.
EXTRACT_BATCH_SIZE = 512


def check_feature_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``feature_dtype`` setting, or a ``ValueError`` naming the allowed ones."""
    if name not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype must be one of {list(FEATURE_DTYPES)}, not {name!r}")
    return FEATURE_DTYPES[name]


def labelled_split(data: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and labels of an array split, unlabelled (-1) images dropped."""
    images, labels = load_array_split(data, split)
    keep = labels >= 0
    x = torch.from_numpy(np.ascontiguousarray(images[keep])).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(labels[keep]).long()


@dataclasses.dataclass(eq=False)
class FolderSplit:
    """The labelled images of an image-folder split, read from disk batch by batch.

    ImageNet's 1.28M photos never sit in memory as images: loaders decode them in worker
    processes. ``indices`` are the dataset indices of the labelled images, ``labels`` theirs.
    """

    data: Path
    split: str
    image_size: int
    num_workers: int
    indices: np.ndarray
    labels: torch.Tensor

    @classmethod
    def open(cls, data: str | Path, split: str, image_size: int, num_workers: int) -> FolderSplit:
        labels = open_classification(data, split).labels
        indices = np.flatnonzero(labels >= 0)
        return cls(Path(data), split, image_size, num_workers, indices, torch.from_numpy(labels[indices]).long())

    def test_loader(self, device: torch.device, batch_size: int = EXTRACT_BATCH_SIZE) -> DataLoader:
        """The papers' test view in order: shorter side ``image_size / EVAL_CROP_RATIO`` (256 for
        224), centre crop ``image_size``; pinned memory on CUDA."""
        dataset = open_classification(self.data, self.split, image_size=self.image_size, crop_ratio=EVAL_CROP_RATIO)
        subset = dataset if len(self.indices) == len(dataset) else Subset(dataset, self.indices.tolist())
        return DataLoader(
            subset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
        )


#: A split as the probes take it: in-memory uint8 images and labels (array format) or a
#: :class:`FolderSplit` (image-folder format).
EvalSplit = tuple[torch.Tensor, torch.Tensor] | FolderSplit


def open_eval_split(data: str | Path, split: str, image_size: int, num_workers: int) -> EvalSplit:
    """An array split's labelled images in memory, or an image-folder split to stream.

    ``image_size`` and ``num_workers`` apply to image folders only: array sets are stored at
    their final resolution and used as stored (today's behaviour, unchanged).
    """
    fmt = read_meta(data)["format"]
    if fmt == "array":
        return labelled_split(data, split)
    if fmt == "imagefolder":
        return FolderSplit.open(data, split, image_size, num_workers)
    raise DataError(f"{data}: classification probes read 'array' or 'imagefolder' datasets, not {fmt!r}")


def split_labels(split: EvalSplit) -> torch.Tensor:
    """The int64 labels of a split's labelled images, in the order :func:`split_features` returns."""
    return split.labels if isinstance(split, FolderSplit) else split[1]


@torch.no_grad()
def split_features(
    encoder: nn.Module, split: EvalSplit, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Frozen-encoder features of every labelled image of ``split`` (test view, no augmentation), on the CPU.

    Array splits go through :func:`extract_features` (unchanged). Image folders stream
    through a DataLoader (the papers' resize-256 / centre-224 view, see
    :meth:`FolderSplit.test_loader`), the encoder runs on ``device`` under :func:`autocast`,
    and each batch's features land in one preallocated ``N x D`` matrix. That matrix is the
    memory bound: ImageNet's train split at D = 2048 is 1.28M x 2048 float32 = 10.5 GB, half
    with ``dtype=torch.float16`` (the probes' ``feature_dtype: float16``).
    """
    if not isinstance(split, FolderSplit):
        return extract_features(encoder, split[0], device).to(dtype)
    encoder.eval().to(device)
    feats = torch.empty(len(split.indices), int(encoder.feature_dim), dtype=dtype)
    filled = 0
    for images, labels in split.test_loader(device):
        with autocast(device, True):
            out = encoder(normalize_uint8(images.to(device, non_blocking=True)))
        feats[filled : filled + len(out)] = out.to(dtype).cpu()
        if not torch.equal(labels, split.labels[filled : filled + len(out)]):
            raise DataError(f"{split.data}: labels of split {split.split!r} changed while it was read")
        filled += len(out)
    if filled != len(feats):
        raise DataError(f"{split.data}: split {split.split!r} yielded {filled} images, its index lists {len(feats)}")
    return feats


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

"""Random-resized crops made where image-folder images are decoded (the papers' crop).

The papers' ``RandomResizedCrop`` draws area and aspect ratio relative to the *full*
image at its own resolution. Array datasets hold the full image, so their crop runs on
the training device (``sslaug.augment.views``); an image-folder dataset (ImageNet, iNat,
...) holds photos of every size, so each view's crop is made here, per image, in the
DataLoader workers: decode once, then one ``torchvision.transforms.v2.RandomResizedCrop``
(antialiased bilinear resize) per :class:`CropSpec`. The pipelines then skip their own
crop and apply the rest of the view (flip, colour, blur, ...) on the device.

A crop's randomness is seeded from ``(seed, epoch, dataset index)``, so a resumed run
replays the crops of an uninterrupted one, whatever the worker count or batch order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sslaug.data.formats import ClassificationDataset, CorruptImageError

#: torchvision's and kornia's default aspect-ratio range of RandomResizedCrop (the papers').
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class CropSpec:
    """One view's RandomResizedCrop.

    Attributes:
        size: side of the square output in pixels.
        scale: range of the crop's area as a fraction of the full image's area.
        ratio: range of the crop's aspect ratio (width / height).
    """

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = DEFAULT_RATIO


def decode_side(specs: Sequence[CropSpec]) -> int:
    """The shorter side an image must keep when decoded (JPEG draft mode) for these crops.

    The smallest crop of a spec (its minimum area, square) of an image whose shorter side
    is ``L`` has a side of at least ``L * sqrt(scale_min)`` pixels; decoding at ``L >=
    size / sqrt(scale_min)`` keeps it at least ``size`` pixels, so drafting never makes a
    crop upsampled that full-resolution decoding would have downsampled. (A coarser
    target, e.g. the largest output side, would upsample DINO's 0.05-area local crops.)
    """
    if not specs:
        raise ValueError("no crop specs: a view maker with no pipelines?")
    return max(math.ceil(spec.size / math.sqrt(spec.scale[0])) for spec in specs)


def decode_full(path: Path, min_side: int) -> torch.Tensor:
    """Decode ``path`` to a uint8 RGB tensor ``3 x H x W``, the whole image, its shorter side
    reduced by JPEG draft mode (1/2, 1/4, 1/8 in the DCT) only while it stays ``>= min_side``.

    The error names the file, because one bad file among a million otherwise surfaces as
    an anonymous worker crash.
    """
    try:
        with Image.open(path) as im:
            im.draft("RGB", (min_side, min_side))
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"corrupt image file: {path} ({err})") from err
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The torch seed of one image's crops in one epoch (SeedSequence: no collisions between
    e.g. (epoch, index) and (epoch + 1, index - k), as a linear formula would have)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class RandomCropViews(Dataset):
    """Index -> one uint8 ``3 x size x size`` crop per spec of that image, for one epoch.

    Wraps an image-folder :class:`ClassificationDataset` (its file paths); the default
    collate turns a batch into a list of ``[B, 3, size, size]`` tensors, one per spec.
    """

    def __init__(self, dataset: ClassificationDataset, specs: Sequence[CropSpec], seed: int, epoch: int) -> None:
        from torchvision.transforms import v2  # lazily: only image-folder runs pay for torchvision

        if dataset.format != "imagefolder":
            raise ValueError(
                f"{dataset.directory}: crops on decode are for image-folder datasets, not {dataset.format!r}"
            )
        self.dataset = dataset
        self.specs = tuple(specs)
        self.seed = seed
        self.epoch = epoch
        self.min_side = decode_side(self.specs)
        self.transforms = [
            v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True) for spec in self.specs
        ]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = decode_full(self.dataset.image_path(index), self.min_side)
        # Own seed per (seed, epoch, index); fork_rng keeps the caller's generator untouched
        # (with num_workers=0 this runs in the training process, whose RNG is checkpointed).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            return tuple(transform(image) for transform in self.transforms)

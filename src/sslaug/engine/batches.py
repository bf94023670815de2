"""Training batches of fixed-size uint8 images, reproducible per (seed, epoch, step).

The order of an epoch is a permutation drawn from ``seed + epoch``, so a run resumed
at step k of an epoch sees exactly the batches an uninterrupted run would. Image-folder
crops made on decode are seeded per ``(seed, epoch, index)`` (``sslaug.data.crops``), so
they replay too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from sslaug.data.crops import CropSpec, RandomCropViews
from sslaug.data.formats import load_array_split, open_classification, read_meta


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The global sample order of one epoch."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_items, generator=generator)


class BatchSource:
    """Yields this process's share of each global batch as uint8 on ``device``.

    Array datasets live on the device whole (a few hundred MB at CIFAR scale), so a batch
    is one index operation and is ``[b, 3, H, W]``: the full images, which the view
    pipelines crop on the device. Image-folder datasets decode in DataLoader workers;
    after :meth:`crop_on_decode` (what pretraining does) a batch is a list of ``[b, 3, s,
    s]`` crops, one per view pipeline, cut from the full-resolution photo as the papers'
    RandomResizedCrop does. Without crop specs they give centre-cropped ``image_size``
    squares (the evaluation decode; benchmarks of the old path).
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str | Sequence[str],
        global_batch: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        image_size: int | None = None,
        num_workers: int = 4,
    ) -> None:
        meta = read_meta(data_dir)
        self.global_batch = global_batch
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        self.local_batch = global_batch // world_size
        self.num_workers = num_workers
        self.format: str = meta["format"]
        self.crop_specs: tuple[CropSpec, ...] | None = None
        # Several splits (STL-10's train + unlabeled) are concatenated in the order given; labels are not read.
        splits = [split] if isinstance(split, str) else list(split)
        if len(splits) > 1 and meta["format"] != "array":
            raise ValueError(f"{data_dir}: pretraining on several splits {splits} needs an array-format dataset")
        split = splits[0]
        if meta["format"] == "array":
            arrays = [load_array_split(data_dir, name)[0] for name in splits]
            images = np.array(arrays[0]) if len(arrays) == 1 else np.concatenate(arrays)
            self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
            self.dataset = None
            self.num_items = self.images.shape[0]
        else:
            self.images = None
            self.dataset = open_classification(data_dir, split, image_size=image_size)
            self.num_items = len(self.dataset)
        if self.num_items < global_batch:
            raise ValueError(
                f"dataset {data_dir} split {split!r} has {self.num_items} images, fewer than one batch of {global_batch}"
            )

    def crop_on_decode(self, specs: Sequence[CropSpec]) -> None:
        """Image-folder data: from now on each batch is one crop per spec of every image."""
        if self.dataset is None:
            raise ValueError("crops on decode are for image-folder datasets; array datasets are cropped on the device")
        if not specs:
            raise ValueError("crop_on_decode needs at least one crop spec")
        self.crop_specs = tuple(specs)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped)."""
        return self.num_items // self.global_batch

    def _local_indices(self, epoch: int, start_step: int) -> torch.Tensor:
        order = epoch_permutation(self.num_items, self.seed, epoch)
        order = order[: self.steps_per_epoch * self.global_batch].view(self.steps_per_epoch, self.global_batch)
        return order[start_step:, self.rank * self.local_batch : (self.rank + 1) * self.local_batch]

    def epoch(
        self, epoch: int, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]]:
        """``(images, dataset indices)`` of ``epoch`` from ``start_step`` on (for mid-epoch resume)."""
        indices = self._local_indices(epoch, start_step)
        if self.images is not None:
            for step_indices in indices:
                yield self.images[step_indices.to(self.device)], step_indices
            return
        cropped = self.crop_specs is not None
        dataset = RandomCropViews(self.dataset, self.crop_specs, self.seed, epoch) if cropped else self.dataset
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=indices.tolist(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # Its own generator: the loader's base-seed draw must not advance the global one, which
            # the view pipelines use and checkpoints save (a mid-epoch resume would shift it).
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
        )
        for step_indices, batch in zip(indices, loader):
            if cropped:  # one [b, 3, s, s] batch per crop spec
                yield [view.to(self.device, non_blocking=True) for view in batch], step_indices
            else:  # (centre-cropped images, labels)
                yield batch[0].to(self.device, non_blocking=True), step_indices

"""Training batches of fixed-size uint8 images, reproducible per (seed, epoch, step).

The order of an epoch is a permutation drawn from ``seed + epoch``, so a run resumed
at step k of an epoch sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sslaug.data.formats import load_array_split, open_classification, read_meta


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The global sample order of one epoch."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_items, generator=generator)


class BatchSource:
    """Yields this process's share of each global batch as ``[b, 3, H, W]`` uint8 on ``device``.

    Array datasets live on the device whole (a few hundred MB at CIFAR scale), so a batch
    is one index operation; image-folder datasets decode in DataLoader workers.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
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
        if meta["format"] == "array":
            images, _ = load_array_split(data_dir, split)
            self.images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous().to(device)
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

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped)."""
        return self.num_items // self.global_batch

    def _local_indices(self, epoch: int, start_step: int) -> torch.Tensor:
        order = epoch_permutation(self.num_items, self.seed, epoch)
        order = order[: self.steps_per_epoch * self.global_batch].view(self.steps_per_epoch, self.global_batch)
        return order[start_step:, self.rank * self.local_batch : (self.rank + 1) * self.local_batch]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, dataset indices)`` of ``epoch`` from ``start_step`` on (for mid-epoch resume)."""
        indices = self._local_indices(epoch, start_step)
        if self.images is not None:
            for step_indices in indices:
                yield self.images[step_indices.to(self.device)], step_indices
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=indices.tolist(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for step_indices, (images, _) in zip(indices, loader):
            yield images.to(self.device, non_blocking=True), step_indices

"""Generative views in training (002_a484f64d5b0479a0.txt, Sec. 3; IMPLEMENTATION_NOTES).

Each image has V precomputed generated views (precompute_generative_views). Every epoch
a view index k in 0..V-1 is drawn per image; with probability p the generated view k
replaces the image for one view (default) or both, and then goes through the strategy's
pipeline: the full standard pipeline (default), random crop + flip only, or nothing.

For pre-cropped input (image-folder datasets: the loader made the pipeline's crop of
the photo), the default strategy crops a substituted generated image here with the
pipeline's own crop (kornia, on the full generated image, the same spec) and then runs
the rest of the pipeline on the merged batch, so it sees exactly what it would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sslaug.augment.generative_views import MANIFEST_FILE, VIEWS_FILE, ShardError, verify_shard
from sslaug.augment.views import ViewPipeline, ViewRecipe, normalize_uint8

STRATEGIES = ("generative_standard", "generative_crop", "generative_only")


@dataclass(frozen=True)
class GenerativeConfig:
    """Defaults: p = 1 on one view, generated view then the standard pipeline (the paper's default)."""

    generator: str = "unclip"
    p: float = 1.0
    views: str = "one"
    strategy: str = "generative_standard"

    def validate(self) -> None:
        if self.views not in ("one", "both"):
            raise ValueError(f"generative option views must be 'one' or 'both', not {self.views!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"generative strategy {self.strategy!r} unknown; known: {STRATEGIES}")


class GeneratedViewBank:
    """All shards of one dataset's generated views, memory-mapped, verified against their manifests."""

    def __init__(self, root: Path, num_items: int) -> None:
        shard_dirs = sorted(p.parent for p in Path(root).glob(f"shard*/{MANIFEST_FILE}"))
        if not shard_dirs:
            raise ShardError(f"no generated-view shards under {root}")
        self.shards: list[tuple[int, int, np.ndarray]] = []
        for shard_dir in shard_dirs:
            manifest = verify_shard(shard_dir)
            start, end = manifest["indices"]
            self.shards.append((start, end, np.load(shard_dir / VIEWS_FILE, mmap_mode="r")))
        self.shards.sort(key=lambda s: s[0])
        covered = 0
        for start, end, _ in self.shards:
            if start != covered:
                raise ShardError(f"generated views under {root} miss images {covered}..{start - 1}")
            covered = end
        if covered != num_items:
            raise ShardError(f"generated views under {root} cover {covered} images, the dataset has {num_items}")
        self.num_views = self.shards[0][2].shape[1]

    def lookup(self, indices: np.ndarray, view_index: np.ndarray) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]``: view ``view_index[i]`` of image ``indices[i]``.

        One fancy-indexed read per shard touched, not one per image.
        """
        starts = np.array([start for start, _, _ in self.shards])
        shard_of = np.searchsorted(starts, indices, side="right") - 1
        size = self.shards[0][2].shape[2:]
        out = np.empty((len(indices), *size), dtype=np.uint8)
        for shard in np.unique(shard_of):
            start, _, views = self.shards[shard]
            rows = np.nonzero(shard_of == shard)[0]
            out[rows] = views[indices[rows] - start, view_index[rows]]
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class GenerativeAugment(nn.Module):
    """Replaces images by generated views per the config, then applies the strategy's pipeline."""

    def __init__(self, bank: GeneratedViewBank, config: GenerativeConfig, size: int, seed: int) -> None:
        super().__init__()
        self.bank = bank
        self.config = config
        self.seed = seed
        self.size = size
        crop_only = ViewRecipe(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        self.crop_pipeline = ViewPipeline(crop_only, size)

    def view_indices(self, epoch: int) -> torch.Tensor:
        """The view index k of every image for ``epoch`` (redrawn each epoch, reproducibly).

        Drawn once per epoch and kept, not once per step: it covers the whole dataset.
        """
        if getattr(self, "_epoch_views", (None,))[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            n = sum(end - start for start, end, _ in self.bank.shards)
            self._epoch_views = (epoch, torch.randint(self.bank.num_views, (n,), generator=generator))
        return self._epoch_views[1]

    def applies_to(self, view_number: int) -> bool:
        return view_number == 0 or self.config.views == "both"

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        indices: torch.Tensor,
        epoch: int,
        pipeline: ViewPipeline,
        precropped: bool = False,
    ) -> torch.Tensor:
        """``images``: full uint8 images, or (``precropped``) the loader's crops to ``pipeline.crop_spec``."""
        replace = torch.rand(images.shape[0], device=images.device) < self.config.p
        if not bool(replace.any()):
            return pipeline(images, precropped=precropped)
        chosen = indices[replace.cpu()].cpu()
        generated = self.bank.lookup(chosen.numpy(), self.view_indices(epoch)[chosen].numpy()).to(images.device)
        if self.config.strategy == "generative_standard":
            if precropped:  # crop the generated images as the pipeline would have, keep the loader's other crops
                crops = pipeline.crops(images, precropped=True)
                crops[replace] = pipeline.crops(generated)
                return pipeline.augment_crops(crops)
            mixed = images.clone()
            mixed[replace] = generated
            return pipeline(mixed)
        out = pipeline(images, precropped=precropped)
        if self.config.strategy == "generative_crop":
            out[replace] = self.crop_pipeline(generated)
        else:  # generative_only: the generated image as it is
            out[replace] = nn.functional.interpolate(normalize_uint8(generated), size=out.shape[-2:])
        return out

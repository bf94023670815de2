"""A run's view maker: the method's view pipelines plus its augmentation variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from sslaug.augment.views import MultiStagePipeline, ViewPipeline
from sslaug.data.crops import CropSpec

if TYPE_CHECKING:  # the augmentations import torchvision; only runs that use them pay for it
    from sslaug.augment.generative import GenerativeAugment
    from sslaug.augment.sassl import StyleAugment


class ViewMaker(nn.Module):
    """uint8 batch (+ dataset indices, epoch) -> the method's augmented views.

    SASSL stylizes the left view's crop only (SASSL Sec. 5.1); generative views replace
    the left view's image (or both views') before its pipeline. MSR's two multi-stage
    pipelines give four views: ``[weak1, aggressive1, weak2, aggressive2]``.

    The batch is either full images (``[B, 3, H, W]`` uint8; every pipeline crops it on the
    device) or, from an image-folder loader, one pre-cropped uint8 batch per pipeline, made
    to :meth:`crop_specs` (the pipelines skip their crop).
    """

    def __init__(
        self,
        pipelines: list[ViewPipeline] | list[MultiStagePipeline],
        style: StyleAugment | None = None,
        generative: GenerativeAugment | None = None,
    ) -> None:
        super().__init__()
        self.pipelines = nn.ModuleList(pipelines)
        self.style = style
        self.generative = generative

    def crop_specs(self) -> list[CropSpec]:
        """Each pipeline's RandomResizedCrop, in pipeline order (one per pipeline: MSR's weak and
        aggressive views share one crop, a strong view uses its weak pipeline's)."""
        return [pipeline.crop_spec for pipeline in self.pipelines]

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor | Sequence[torch.Tensor], indices: torch.Tensor, epoch: int
    ) -> list[torch.Tensor]:
        precropped = not isinstance(images, torch.Tensor)
        if precropped and len(images) != len(self.pipelines):
            raise ValueError(f"{len(images)} pre-cropped batches for {len(self.pipelines)} view pipelines")
        views = []
        for number, pipeline in enumerate(self.pipelines):
            source = images[number] if precropped else images
            if self.generative is not None and self.generative.applies_to(number):
                views.append(self.generative(source, indices, epoch, pipeline, precropped=precropped))
            else:
                out = pipeline(source, after_crop=self.style if number == 0 else None, precropped=precropped)
                # A multi-stage pipeline (MSR) gives [weak, aggressive] of one crop.
                views += out if isinstance(out, list) else [out]
        return views

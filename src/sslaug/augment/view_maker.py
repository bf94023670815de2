"""A run's view maker: the method's view pipelines plus its augmentation variant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sslaug.augment.views import MultiStagePipeline, ViewPipeline

if TYPE_CHECKING:  # the augmentations import torchvision; only runs that use them pay for it
    from sslaug.augment.generative import GenerativeAugment
    from sslaug.augment.sassl import StyleAugment


class ViewMaker(nn.Module):
    """uint8 batch (+ dataset indices, epoch) -> the method's augmented views.

    SASSL stylizes the left view's crop only (SASSL Sec. 5.1); generative views replace
    the left view's image (or both views') before its pipeline. MSR's two multi-stage
    pipelines give four views: ``[weak1, aggressive1, weak2, aggressive2]``.
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

    @torch.no_grad()
    def forward(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        views = []
        for number, pipeline in enumerate(self.pipelines):
            if self.generative is not None and self.generative.applies_to(number):
                views.append(self.generative(images, indices, epoch, pipeline))
            else:
                out = pipeline(images, after_crop=self.style if number == 0 else None)
                # A multi-stage pipeline (MSR) gives [weak, aggressive] of one crop.
                views += out if isinstance(out, list) else [out]
        return views

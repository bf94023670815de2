"""SASSL (000_88efd4324cd49182.txt, Algorithm 1): style transfer on the left view's crop.

With probability p each crop is stylized: its style vector is blended with a style
vector (alpha, feature space) and the stylized image with the crop (beta, pixel space).
Style vectors come from the same batch shifted by one (in-batch) or from a precomputed
bank of an external style set (precompute_style_features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sslaug.augment.stylizer import Stylizer, StylizerConfig, load_stylizer
from sslaug.settings import apply_overrides


@dataclass(frozen=True)
class SASSLConfig:
    """Defaults are the paper's (Sec. 5.1): p = 0.8, alpha, beta ~ U(0.1, 0.3)."""

    style_source: str = "in_batch"
    p: float = 0.8
    alpha_min: float = 0.1
    alpha_max: float = 0.3
    beta_min: float = 0.1
    beta_max: float = 0.3


class StyleAugment(nn.Module):
    """Stylizes a random subset of a crop batch ``[B, 3, H, W]`` in [0, 1] (per-sample alpha, beta)."""

    def __init__(self, stylizer: Stylizer, config: SASSLConfig, style_bank: torch.Tensor | None = None) -> None:
        super().__init__()
        self.stylizer = stylizer.eval().requires_grad_(False)
        self.config = config
        if config.style_source != "in_batch" and style_bank is None:
            raise ValueError(f"style source {config.style_source!r} needs precomputed style features")
        self.register_buffer("style_bank", None if style_bank is None else style_bank.float())

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        c = self.config
        n = crops.shape[0]
        chosen = torch.rand(n, device=crops.device) < c.p
        if not bool(chosen.any()):
            return crops
        z_content = None
        if self.style_bank is None:
            # In-batch styles: each image takes the style of its neighbour (circular shift). One
            # pass of the style predictor gives both the content's and the style's vectors.
            z_all = self.stylizer.embed_style(crops)
            z_content, z_style = z_all[chosen], z_all.roll(1, dims=0)[chosen]
        else:
            index = torch.randint(self.style_bank.shape[0], (int(chosen.sum()),), device=crops.device)
            z_style = self.style_bank[index]
        k = z_style.shape[0]
        alpha = torch.empty(k, device=crops.device).uniform_(c.alpha_min, c.alpha_max)
        beta = torch.empty(k, device=crops.device).uniform_(c.beta_min, c.beta_max)
        out = crops.clone()
        out[chosen] = self.stylizer.stylize(crops[chosen], z_style, alpha, beta, z_content).clamp(0, 1)
        return out


def build_style_augment(
    options: Mapping[str, Any],
    stylizer_weights: str | None,
    stylizer_config: Mapping[str, Any] | None,
    style_features: Path | None,
    device: torch.device,
) -> StyleAugment:
    """The SASSL augmentation of one run, on ``device``."""
    config = apply_overrides(SASSLConfig, dict(options))
    stylizer = load_stylizer(stylizer_weights, StylizerConfig.from_dict(stylizer_config))
    bank = None
    if style_features is not None:
        bank = torch.load(style_features, map_location="cpu", weights_only=False)["embeddings"]
    return StyleAugment(stylizer, config, bank).to(device)

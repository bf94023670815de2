"""The 14-op strong augmentation pool (CLSA; FixMatch-style RandAugment + Cutout for Rescue).

Batched and device-agnostic: float images in [0, 1], ``[B, 3, H, W]``, with per-sample
random ops and magnitudes. Each of ``num_ops`` slots draws, per sample, one op of the
pool (with replacement), a level ``v`` uniform in ``1..9`` and a sign, and is applied
with probability ``p``. An op's value is ``v * max / 10 + bias`` with the (max, bias) of
``IMPLEMENTATION_NOTES.md`` (CLSA's code, which is FixMatch's pool):

    AutoContrast, Equalize, Identity                   no magnitude
    Brightness, Color, Contrast, Sharpness (0.9, 0.05) enhance factor 0.14 .. 0.86
    Posterize (4, 4)                                   bits int(v*4/10) + 4 = 4 .. 7
    Rotate (30, 0)                                     +-3 .. 27 degrees
    Solarize (256, 0)                                  threshold 256 - int(v*256/10) (of 255)
    ShearX / ShearY (0.3, 0)                           +-0.03 .. 0.27
    TranslateX / TranslateY (0.3, 0)                   +-0.03 .. 0.27 of the side

The ops are kornia's (``kornia.enhance`` with its PIL-compatible variants, and
``kornia.geometry.transform``); samples are grouped by op, so every op runs once per
slot on its subset of the batch, whatever the batch size. Geometric ops fill with black
(PIL's default). The optional Cutout (Rescue; FixMatch's ``CutoutAbs`` of half the side,
grey fill) is kornia's ``RandomErasing`` with a fixed square area; unlike FixMatch's
border-clipped box it always lies inside the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import kornia.augmentation as K
import kornia.enhance as E
import kornia.geometry.transform as G
import torch
from torch import nn

from sslaug.augment.views import IMAGENET_MEAN, IMAGENET_STD, ViewPipeline, ViewRecipe
from sslaug.data.crops import CropSpec
from sslaug.settings import apply_overrides


def _auto_contrast(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # PIL autocontrast: per channel min..max -> 0..1; a constant channel stays as it is.
    flat = x.flatten(2)
    constant = (flat.amax(2) - flat.amin(2) < 1e-6)[..., None, None]
    return torch.where(constant, x, E.normalize_min_max(x))


def _xy(v: torch.Tensor, axis: int) -> torch.Tensor:
    out = torch.zeros(v.shape[0], 2, dtype=v.dtype, device=v.device)
    out[:, axis] = v
    return out


def _translate(axis: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def op(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1] if axis == 0 else x.shape[-2]
        return G.translate(x, _xy(v * side, axis))  # fraction of the side -> pixels

    return op


#: name -> (max, bias, signed, function(x, value per sample)). Order = CLSA's op list.
POOL: dict[str, tuple[float, float, bool, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "auto_contrast": (0.0, 0.0, False, _auto_contrast),
    "brightness": (0.9, 0.05, False, lambda x, v: E.adjust_brightness_accumulative(x, v)),
    "color": (0.9, 0.05, False, lambda x, v: E.adjust_saturation_with_gray_subtraction(x, v)),
    "contrast": (0.9, 0.05, False, lambda x, v: E.adjust_contrast_with_mean_subtraction(x, v)),
    "equalize": (0.0, 0.0, False, lambda x, v: E.equalize(x)),
    "identity": (0.0, 0.0, False, lambda x, v: x),
    "posterize": (4.0, 4.0, False, lambda x, v: E.posterize(x, v.long())),
    "rotate": (30.0, 0.0, True, lambda x, v: G.rotate(x, v)),
    "sharpness": (0.9, 0.05, False, lambda x, v: E.sharpness(x, v).clamp(0, 1)),
    "shear_x": (0.3, 0.0, True, lambda x, v: G.shear(x, _xy(v, 0))),
    "shear_y": (0.3, 0.0, True, lambda x, v: G.shear(x, _xy(v, 1))),
    "solarize": (256.0, 0.0, False, lambda x, v: E.solarize(x, v / 255)),
    "translate_x": (0.3, 0.0, True, _translate(0)),
    "translate_y": (0.3, 0.0, True, _translate(1)),
}
OPS = tuple(POOL)
# CLSA's Table 1 lists Invert where the authors' code (and FixMatch) has Identity.
POOL["invert"] = (0.0, 0.0, False, lambda x, v: E.invert(x))
#: ``pool`` setting -> its 14 ops: "code" (default, the authors' code and FixMatch) or "paper" (Table 1).
POOLS = {"code": OPS, "paper": tuple("invert" if name == "identity" else name for name in OPS)}
#: Ops whose value is an integer in the reference code (``int(v * max / 10) + bias``).
_INTEGER = frozenset({"posterize", "solarize"})


def op_value(name: str, level: torch.Tensor, sign: torch.Tensor | None = None) -> torch.Tensor:
    """The op's value for integer levels ``1..9``: ``v * max / 10 + bias`` (signed for geometric
    ops); Solarize returns the threshold ``256 - int(v * 256 / 10)`` on the 0..255 scale."""
    max_, bias, signed, _ = POOL[name]
    level = level.float()
    value = torch.floor(level * max_ / 10) if name in _INTEGER else level * max_ / 10
    value = value + bias
    if name == "solarize":
        value = 256 - value
    if signed and sign is not None:
        value = value * sign
    return value


@dataclass(frozen=True)
class StrongConfig:
    """num_ops: ops per sample (CLSA 5; FixMatch's RandAugmentMC 2); p: probability of each;
    max_level: levels are drawn from 1..max_level-1 (FixMatch m = 10); cutout: side of the
    Cutout square as a fraction of the image side (0 = none; FixMatch 0.5); pool: "code"
    (Identity, as CLSA's code and FixMatch) or "paper" (Invert, CLSA Table 1)."""

    num_ops: int = 5
    p: float = 0.5
    max_level: int = 10
    cutout: float = 0.0
    pool: str = "code"


class StrongAugment(nn.Module):
    """``[B, 3, H, W]`` floats in [0, 1] -> strongly augmented floats in [0, 1] (same shape)."""

    def __init__(self, config: StrongConfig = StrongConfig()) -> None:
        super().__init__()
        if config.pool not in POOLS:
            raise ValueError(f"unknown strong pool {config.pool!r}; use one of {sorted(POOLS)}")
        self.config = config
        self.ops = POOLS[config.pool]
        side = config.cutout
        self.cutout = (
            K.RandomErasing(scale=(side * side, side * side), ratio=(1.0, 1.0), value=0.5, p=1.0)
            if side > 0
            else None
        )

    def sample(self, batch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Per-sample parameters, ``[B, num_ops]`` each: op index, level, sign, applied."""
        shape = (batch, self.config.num_ops)
        return {
            "op": torch.randint(0, len(self.ops), shape, device=device),
            "level": torch.randint(1, self.config.max_level, shape, device=device),
            "sign": torch.randint(0, 2, shape, device=device).float() * 2 - 1,
            "apply": torch.rand(shape, device=device) < self.config.p,
        }

    @torch.no_grad()
    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply sampled ``params``: each op runs once per slot on the samples that drew it."""
        x = x.clone()
        # One host copy of the small op table, then per-(slot, op) index groups.
        chosen = torch.where(params["apply"], params["op"], -1).cpu()
        for slot in range(chosen.shape[1]):
            column = chosen[:, slot]
            for number, name in enumerate(self.ops):
                if name == "identity":
                    continue
                index = (column == number).nonzero().squeeze(1)
                if index.numel() == 0:
                    continue
                index = index.to(x.device, non_blocking=True)
                value = op_value(name, params["level"][index, slot], params["sign"][index, slot]).to(x.dtype)
                x[index] = POOL[name][3](x[index], value).clamp_(0, 1)
        if self.cutout is not None:
            x = self.cutout(x)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], x.device))


class StrongViewPipeline(nn.Module):
    """uint8 batch -> a strong view: the weak recipe's pipeline (unnormalised), then the
    strong pool, then normalisation (CLSA: "MoCo v2 weak pipeline followed by the 14-op
    strong augmentation"). Its crop is the weak pipeline's (``crop_spec``)."""

    def __init__(self, recipe: ViewRecipe, size: int, config: StrongConfig) -> None:
        super().__init__()
        self.weak = ViewPipeline(recipe, size, normalize=False)
        self.strong = StrongAugment(config)
        self.normalize = K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD))

    @property
    def crop_spec(self) -> CropSpec:
        return self.weak.crop_spec

    @torch.no_grad()
    def forward(
        self, images_uint8: torch.Tensor, after_crop: nn.Module | None = None, precropped: bool = False
    ) -> torch.Tensor:
        return self.normalize(self.strong(self.weak(images_uint8, after_crop=after_crop, precropped=precropped)))


# CLSA's strong crops (IMPLEMENTATION_NOTES, CLSA): (size at 224 px, min scale, max scale).
CLSA_CROPS = ((224, 0.2, 1.0), (192, 0.172, 0.86), (160, 0.143, 0.715), (128, 0.114, 0.571), (96, 0.086, 0.429))
CLSA_DEFAULTS = {"crops": "single", "query": "weak", "key": "weak", "loss": "ddm"}


def scaled_crop_size(paper_size: int, image_size: int, paper_image_size: int = 224) -> int:
    """A crop size of the paper's 224 px training, scaled to this scale's image size
    (at 32 px: 224/192/160/128/96 -> 32/27/23/18/14), at least 8 px."""
    return max(8, round(paper_size * image_size / paper_image_size))


def strong_pipelines(
    augmentation: str, weak: tuple[ViewRecipe, ViewRecipe], size: int, options: dict[str, Any], settings: dict[str, Any]
) -> list[nn.Module]:
    """The view pipelines of a CLSA or Rescue run, in the order its method reads them.

    CLSA: ``[query, key, *strong views]``. A strong view is the weak (MoCo v2) recipe with
    the crop's scale range at the crop's (scaled) size, then the strong pool. Table 4's
    strong query / key is the CLSA-Single strong view. ``loss: none`` adds no strong views;
    ``crops: single`` adds the 96 px one, ``multi`` all five.
    Rescue: ``[view a, view b, strong view]``, the strong view of every image (the method
    forwards only the top-k): the method's crop and flip, then RandAugment + Cutout
    (FixMatch's strong branch, which Rescue follows; no colour jitter before it).
    """
    config = apply_overrides(StrongConfig, dict(settings.get("augment", {})))
    if augmentation == "rescue":
        crop_flip = replace(weak[0], jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        return [ViewPipeline(weak[0], size), ViewPipeline(weak[1], size), StrongViewPipeline(crop_flip, size, config)]
    if augmentation != "clsa":
        raise KeyError(f"no strong views for augmentation {augmentation!r}")
    opts = {**CLSA_DEFAULTS, **options}
    choices = {"crops": ("single", "multi"), "query": ("weak", "strong"), "key": ("weak", "strong"), "loss": ("ddm", "contrastive", "none")}
    for key, allowed in choices.items():
        if opts[key] not in allowed:
            raise ValueError(f"clsa option {key}={opts[key]!r}; use one of {allowed}")

    def strong(crop: tuple[int, float, float]) -> StrongViewPipeline:
        paper_size, low, high = crop
        return StrongViewPipeline(replace(weak[0], crop_scale=(low, high)), scaled_crop_size(paper_size, size), config)

    query = strong(CLSA_CROPS[-1]) if opts["query"] == "strong" else ViewPipeline(weak[0], size)
    key = strong(CLSA_CROPS[-1]) if opts["key"] == "strong" else ViewPipeline(weak[1], size)
    crops = () if opts["loss"] == "none" else CLSA_CROPS[-1:] if opts["crops"] == "single" else CLSA_CROPS
    return [query, key, *(strong(c) for c in crops)]

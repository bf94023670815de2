"""SSL view recipes as batched tensor pipelines with per-sample random parameters.

Augmentations run on whole uint8 batches on the training device (kornia), so a
training step never waits for per-image Python work on the CPU. Each pipeline starts
with a RandomResizedCrop, described by its :class:`~sslaug.data.crops.CropSpec`: on full
images (array datasets) the pipeline crops on the device; for image-folder datasets the
loader has already cropped the full-resolution photo to that spec (``precropped=True``),
and the pipeline checks the crop's size and goes on from there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import kornia.augmentation as K
import torch
from torch import nn

from sslaug.data.crops import CropSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation pipeline, in the papers' vocabulary.

    Attributes:
        crop_scale: RandomResizedCrop area range.
        jitter: ColorJitter (brightness, contrast, saturation, hue).
        jitter_p: probability of applying colour jitter.
        grayscale_p: probability of grayscale.
        blur_p: probability of Gaussian blur (sigma 0.1-2, kernel ~10% of the image side).
        solarize_p: probability of solarization (threshold 0.5).
        flip_p: horizontal flip probability.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    solarize_p: float = 0.0
    flip_p: float = 0.5


# Each method's published recipe (per view). SimCLR: Chen et al. 2020 App. A;
# MoCo v2: Chen et al. 2020b; BYOL: Grill et al. 2020 Table 6 (asymmetric blur/solarize);
# MoCo v3, Barlow Twins and DINO use BYOL's asymmetric recipe.
_SIMCLR = ViewRecipe(crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)
_MOCO_V2 = ViewRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)
_BYOL_1 = ViewRecipe(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), blur_p=1.0, solarize_p=0.0)
_BYOL_2 = replace(_BYOL_1, blur_p=0.1, solarize_p=0.2)

# DINO's local crops (Caron et al. 2021, App.): BYOL's colour jitter and grayscale, blur p 0.5,
# no solarization; DINOv2 keeps DINO's recipe.
_DINO_LOCAL = replace(_BYOL_1, blur_p=0.5)

STANDARD_RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    "simclr": (_SIMCLR, _SIMCLR),
    "mocov2": (_MOCO_V2, _MOCO_V2),
    "simsiam": (_MOCO_V2, _MOCO_V2),
    "byol": (_BYOL_1, _BYOL_2),
    "mocov3": (_BYOL_1, _BYOL_2),
    "barlowtwins": (_BYOL_1, _BYOL_2),
    "dino": (_BYOL_1, _BYOL_2),
    "dinov2": (_BYOL_1, _BYOL_2),
}


# MSR's baselines (IMPLEMENTATION_NOTES, MSR): "weak" = crop + flip; "aggressive" = the
# weak crop followed by MoCo v2's colour pipeline (jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale
# 0.2, blur p 0.5, no solarization). AA = aggressive on both views, AW = one of each.
_WEAK = ViewRecipe(crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
_AGGRESSIVE = _MOCO_V2
NAMED_RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    "aggressive": (_AGGRESSIVE, _AGGRESSIVE),
    "aggressive_weak": (_AGGRESSIVE, _WEAK),
    "weak": (_WEAK, _WEAK),
}
#: MSR's multi-stage views (augmentation ``msr``): t1 = this recipe's crop + flip (the weak
#: view), t2 = its colour operations applied to the weak view (the aggressive view).
MSR_RECIPE = _AGGRESSIVE


#: Multi-crop methods' local-crop recipe (the global crops use STANDARD_RECIPES).
LOCAL_RECIPES: dict[str, ViewRecipe] = {"dino": _DINO_LOCAL, "dinov2": _DINO_LOCAL}


@dataclass(frozen=True)
class MultiCrop:
    """Multi-crop (Caron et al. 2020): two global crops and ``local_crops`` small ones.

    Attributes:
        global_scale: RandomResizedCrop area range of the global crops (DINO 0.4-1, DINOv2 0.32-1).
        local_crops: number of local crops (8 in DINO and DINOv2).
        local_scale: area range of the local crops (DINO 0.05-0.4, DINOv2 0.05-0.32).
        local_size: side of a local crop in pixels (96 for 224 px global crops).
    """

    global_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = 8
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_size: int = 96


def multicrop_pipelines(
    method: str, overrides: dict[str, Any] | None, size: int, multicrop: MultiCrop
) -> tuple[list[ViewPipeline], list[ViewPipeline]]:
    """The global and local view pipelines of a multi-crop method; the scale's view overrides
    (e.g. ``blur_p: 0`` at 32 px) apply to both kinds."""
    if method not in LOCAL_RECIPES:
        raise KeyError(f"no multi-crop recipe for method {method!r}; known: {sorted(LOCAL_RECIPES)}")
    globals_ = [replace(r, crop_scale=tuple(multicrop.global_scale)) for r in recipe_for(method, overrides)]
    local = replace(with_overrides(LOCAL_RECIPES[method], overrides), crop_scale=tuple(multicrop.local_scale))
    return (
        [ViewPipeline(r, size) for r in globals_],
        [ViewPipeline(local, multicrop.local_size) for _ in range(multicrop.local_crops)],
    )


def recipe_for(
    method: str, overrides: dict[str, Any] | None = None, recipe: str | None = None
) -> tuple[ViewRecipe, ViewRecipe]:
    """The two view recipes of ``method`` with its scale-level overrides (e.g. ``blur_p: 0``
    at 32 px), or the named ``recipe`` as its paper defines it.

    The overrides tune a method's own published recipe, so they do not apply to a named
    recipe: MSR's aggressive views blur at every image size (its code blurs CIFAR too), and
    an override such as ``blur_p`` would also reach the weak view of ``aggressive_weak``.
    """
    if recipe is not None:
        if recipe not in NAMED_RECIPES:
            raise KeyError(f"unknown view recipe {recipe!r}; known: {sorted(NAMED_RECIPES)}")
        return NAMED_RECIPES[recipe]
    if method in STANDARD_RECIPES:
        base = STANDARD_RECIPES[method]
    else:
        raise KeyError(f"no standard view recipe for method {method!r}; known: {sorted(STANDARD_RECIPES)}")
    return tuple(with_overrides(r, overrides) for r in base)  # type: ignore[return-value]


def with_overrides(recipe: ViewRecipe, overrides: dict[str, Any] | None) -> ViewRecipe:
    """``recipe`` with a scale's view tweaks (config lists become the recipe's tuples)."""
    overrides = dict(overrides or {})
    for key in ("crop_scale", "jitter"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return replace(recipe, **overrides)


def crop_input(crop: nn.Module, spec: CropSpec, images_uint8: torch.Tensor, precropped: bool) -> torch.Tensor:
    """Float crops in [0, 1]: ``crop`` applied to full images, or the loader's crops to ``spec``
    (checked, so a crop made for another pipeline fails here instead of training silently)."""
    images = images_uint8.float().div_(255)
    if not precropped:
        return crop(images)
    if tuple(images.shape[-2:]) != (spec.size, spec.size):
        raise ValueError(
            f"pre-cropped batch of {tuple(images.shape[-2:])} px for a pipeline whose crop is {spec.size} px: "
            "the loader's crop specs and the view pipelines are out of order"
        )
    return images


def colour_ops(recipe: ViewRecipe, size: int) -> list[nn.Module]:
    """The recipe's operations after crop and flip: jitter, grayscale, blur, solarize (in this order)."""
    b, c, s, h = recipe.jitter
    # Kernel ~10% of the side, odd, as SimCLR; at least 3.
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    ops: list[nn.Module] = []
    if recipe.jitter_p > 0:
        ops.append(K.ColorJitter(b, c, s, h, p=recipe.jitter_p))
    if recipe.grayscale_p > 0:
        ops.append(K.RandomGrayscale(p=recipe.grayscale_p))
    if recipe.blur_p > 0:
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=recipe.blur_p))
    if recipe.solarize_p > 0:
        # thresholds=0 / additions=0: kornia's threshold is 0.5 +- thresholds, so a fixed 0.5.
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=recipe.solarize_p))
    return ops


class ViewPipeline(nn.Module):
    """uint8 batch ``[B, 3, H, W]`` -> one normalised float view ``[B, 3, size, size]``.

    Two stages, so that an augmentation can act between them (SASSL stylizes the
    random crop before the remaining colour augmentations, SASSL Sec. 4 / Fig. 1).
    With ``precropped=True`` the input is already this pipeline's crop (``crop_spec``,
    made by the image-folder loader) and the ``crop`` stage is skipped.
    """

    def __init__(self, recipe: ViewRecipe, size: int, normalize: bool = True) -> None:
        super().__init__()
        self.crop_spec = CropSpec(size, tuple(recipe.crop_scale))
        self.crop = K.RandomResizedCrop((size, size), scale=self.crop_spec.scale, ratio=self.crop_spec.ratio)
        ops: list[nn.Module] = [K.RandomHorizontalFlip(p=recipe.flip_p), *colour_ops(recipe, size)]
        if normalize:
            ops.append(K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)))
        self.rest = nn.Sequential(*ops)

    def crops(self, images_uint8: torch.Tensor, precropped: bool = False) -> torch.Tensor:
        """The first stage: float crops in [0, 1]."""
        return crop_input(self.crop, self.crop_spec, images_uint8, precropped)

    def augment_crops(self, crops: torch.Tensor, after_crop: nn.Module | None = None) -> torch.Tensor:
        """The second stage: ``after_crop`` (SASSL's stylization), flip, colour, normalisation."""
        if after_crop is not None:
            crops = after_crop(crops)
        return self.rest(crops)

    @torch.no_grad()
    def forward(
        self, images_uint8: torch.Tensor, after_crop: nn.Module | None = None, precropped: bool = False
    ) -> torch.Tensor:
        return self.augment_crops(self.crops(images_uint8, precropped), after_crop)


class MultiStagePipeline(nn.Module):
    """MSR's multi-stage augmentation (MSR Eq. 3): uint8 batch -> ``[weak, aggressive]`` views.

    ``t1`` = RandomResizedCrop + flip gives the weak view; ``t2`` = the recipe's colour
    operations (jitter, grayscale, blur) act on that same weak crop, so the aggressive view
    is ``t2(t1(x))`` and both come from one crop at the cost of about one pipeline, so
    one ``crop_spec``.
    """

    def __init__(self, recipe: ViewRecipe, size: int) -> None:
        super().__init__()
        self.crop_spec = CropSpec(size, tuple(recipe.crop_scale))
        self.crop = K.RandomResizedCrop((size, size), scale=self.crop_spec.scale, ratio=self.crop_spec.ratio)
        self.flip = K.RandomHorizontalFlip(p=recipe.flip_p)
        self.second = nn.Sequential(*colour_ops(recipe, size))
        self.normalize = K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD))

    @torch.no_grad()
    def forward(
        self, images_uint8: torch.Tensor, after_crop: nn.Module | None = None, precropped: bool = False
    ) -> list[torch.Tensor]:
        if after_crop is not None:
            raise ValueError("multi-stage views take no after-crop augmentation")
        weak = self.flip(crop_input(self.crop, self.crop_spec, images_uint8, precropped))
        aggressive = self.second(weak.clone())  # kornia may reuse the input for untouched samples
        return [self.normalize(weak), self.normalize(aggressive)]


def normalize_uint8(images_uint8: torch.Tensor) -> torch.Tensor:
    """Evaluation-time transform: scale to [0, 1] and normalise, no augmentation."""
    mean = torch.tensor(IMAGENET_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images_uint8.device).view(1, 3, 1, 1)
    return (images_uint8.float() / 255 - mean) / std

"""ICGAN views for :mod:`sslaug.augment.generative_views` (002_a484f64d5b0479a0.txt, "ICGAN").

Generation as the authors' code (VectorInstitute/GenerativeSSL ``icgan/icgan_inference.py``,
``icgan/config.py``; IMPLEMENTATION_NOTES.md "Generative views"):

1. the image (square, ImageNet mean/std normalised, bicubic to 224 px) goes through the
   SwAV ResNet-50 of ic_gan (``data_utils.utils.load_pretrained_feature_extractor(...,
   feature_extractor="selfsupervised")``); its features are L2-normalised;
2. noise ``z`` is 128-d truncated normal on ``[-2 t, 2 t]`` with truncation ``t = 0.7``;
3. the generator ``icgan_biggan_imagenet_res256`` (``inference.utils.load_model_inference``)
   maps ``G(z, None, features)`` to [-1, 1]; the image is mapped to [0, 1] and resized to the
   dataset's size.

The ic_gan code is not on PyPI: it comes from a checkout of facebookresearch/ic_gan that
the user provides (``generative.icgan.code`` at the pinned ``commit``), with the released
weights (``generative.models.icgan``: the ``icgan_biggan_imagenet_res256`` folder holding
``state_dict_best0.pth``; ``generative.icgan.swav``: ``swav_pretrained.pth.tar``).
**Licence: ic_gan and its weights are CC-BY-NC 4.0 (non-commercial use only).**

``tiny-random`` (the mini scale) is a small random-weight instance-conditioned generator
with the same ``G(z, y, feats)`` interface and a small random feature extractor: the whole
path runs, the views mean nothing.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslaug.data.formats import DataError

ICGAN_LICENSE = "CC-BY-NC 4.0 (facebookresearch/ic_gan): non-commercial use only"
ICGAN_EXPERIMENT = "icgan_biggan_imagenet_res256"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FEATURE_SIZE = 224  # icgan_inference.preprocess_input_image: bicubic to 224 before SwAV
_TINY_FEATURES = 64
_TINY_Z = 16


@dataclass(frozen=True)
class IcganSettings:
    """ICGAN settings that are not in :class:`~sslaug.augment.generative_views.ViewConfig`.

    Attributes:
        code: the user's facebookresearch/ic_gan checkout (None for ``tiny-random``).
        commit: the commit ``code`` must be at (checked with git; None skips the check).
        swav: SwAV ResNet-50 weights (``swav_pretrained.pth.tar``) for the instance features.
        truncation: noise truncation ``t``: z ~ N(0, 1) truncated to [-2t, 2t] (authors: 0.7).
    """

    code: str | None = None
    commit: str | None = None
    swav: str | None = None
    truncation: float = 0.7

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IcganBackend:
    """ic_gan's two networks: ``features(x) -> (feats, ...)`` and ``generator(z, y, feats) -> [-1, 1]``."""

    feature_extractor: nn.Module
    generator: nn.Module
    dim_z: int
    description: dict[str, Any]


# --------------------------------------------------------------------------- ic_gan checkout


def checkout_commit(code: Path) -> str:
    """HEAD of the ic_gan checkout; :class:`DataError` naming the path if it is not a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise DataError(f"ICGAN code {code} is not a git checkout of facebookresearch/ic_gan ({err})") from err
    return out.stdout.strip()


def check_icgan_inputs(model: str, settings: IcganSettings) -> str | None:
    """Check the checkout (at the pinned commit), weights and SwAV file before any work; returns HEAD.

    Raises:
        DataError: naming the config key and path that is wrong.
    """
    from sslaug.augment.generative_views import TINY_RANDOM

    if model == TINY_RANDOM:
        return None
    if not settings.code or not Path(settings.code, "inference", "utils.py").is_file():
        raise DataError(
            f"generative.icgan.code: {settings.code!r} is not an ic_gan checkout (no inference/utils.py); "
            f"clone facebookresearch/ic_gan ({ICGAN_LICENSE}) and set its path"
        )
    head = checkout_commit(Path(settings.code))
    if settings.commit and head != settings.commit:
        raise DataError(
            f"generative.icgan.code: {settings.code} is at commit {head}, the config pins {settings.commit}"
        )
    best = Path(model) / "state_dict_best0.pth"
    if not best.is_file():
        raise DataError(f"generative.models.icgan: {best} missing (the released {ICGAN_EXPERIMENT} folder)")
    if not settings.swav or not Path(settings.swav).is_file():
        raise DataError(f"generative.icgan.swav: SwAV weights {settings.swav!r} not found")
    return head


def load_icgan_backend(experiment_dir: str | Path, settings: IcganSettings, device: torch.device) -> IcganBackend:
    """The released ICGAN generator and SwAV extractor, built by the ic_gan checkout's own code."""
    head = check_icgan_inputs(str(experiment_dir), settings)
    code = Path(str(settings.code)).resolve()
    experiment = Path(experiment_dir)
    best = experiment / "state_dict_best0.pth"
    sys.path.insert(0, str(code))  # ic_gan's modules import each other as top-level packages
    inference_utils = importlib.import_module("inference.utils")
    data_utils = importlib.import_module("data_utils.utils")
    # As GenerativeSSL's ICGANInference.load_icgan: the experiment's stored config, then ic_gan's loader.
    config = torch.load(best, map_location="cpu", weights_only=False)["config"]
    config.update(weights_root=str(experiment.parent), experiment_name=experiment.name, model_backbone="biggan")
    generator, _ = inference_utils.load_model_inference(config, device=str(device))
    features = data_utils.load_pretrained_feature_extractor(settings.swav, feature_extractor="selfsupervised")
    return IcganBackend(
        feature_extractor=features.to(device).eval(),
        generator=generator.to(device).eval(),
        dim_z=int(generator.dim_z),
        description={"code": str(code), "commit": head, "experiment": str(experiment), "swav": settings.swav},
    )


# --------------------------------------------------------------------------- tiny random (mini scale)


class TinyInstanceGenerator(nn.Module):
    """A small random generator with ic_gan's BigGAN interface ``forward(z, y, feats)`` -> [-1, 1]."""

    def __init__(self, dim_z: int = _TINY_Z, feat_dim: int = _TINY_FEATURES, size: int = 32) -> None:
        super().__init__()
        self.dim_z, self.size = dim_z, size
        self.fc = nn.Linear(dim_z + feat_dim, 32 * 4 * 4)
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(16, 3, 3, padding=1),
        )  # fmt: skip

    def forward(self, z: torch.Tensor, y: torch.Tensor | None, feats: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, feats], dim=1)).view(-1, 32, 4, 4)
        return torch.tanh(F.interpolate(self.body(h), size=self.size, mode="nearest"))


class TinyFeatureExtractor(nn.Module):
    """A small random conv net returning ``(features, None)`` like ic_gan's ResNet-50."""

    def __init__(self, dim: int = _TINY_FEATURES) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, dim, 7, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x), None


def build_tiny_icgan_backend(seed: int, device: torch.device) -> IcganBackend:
    """Seeded, so every process (and a resumed shard) builds the same networks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features, generator = TinyFeatureExtractor(), TinyInstanceGenerator()
    return IcganBackend(features.to(device).eval(), generator.to(device).eval(), generator.dim_z, {"weights": "random"})


# --------------------------------------------------------------------------- views


def truncated_noise(dim: int, truncation: float, seed: int) -> torch.Tensor:
    """``[dim]`` noise ~ N(0, 1) truncated to [-2t, 2t] (scipy's truncnorm in the authors' code)."""
    z = torch.empty(dim)
    return nn.init.trunc_normal_(z, 0.0, 1.0, -2 * truncation, 2 * truncation, generator=torch.Generator().manual_seed(seed))  # fmt: skip


class IcganViewGenerator:
    """Generates ``views`` ICGAN samples per image, conditioned on the image's SwAV features."""

    def __init__(self, config: Any, device: torch.device, batch_size: int = 8, settings: IcganSettings | None = None) -> None:  # fmt: skip
        from sslaug.augment.generative_views import TINY_RANDOM

        self.config = config
        self.device = device
        self.batch_size = batch_size
        self.settings = settings or IcganSettings()
        self.tiny = config.model == TINY_RANDOM
        self.backend = (
            build_tiny_icgan_backend(config.seed, device)
            if self.tiny
            else load_icgan_backend(config.model, self.settings, device)
        )
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.mean, self.std = mean.view(1, 3, 1, 1).to(device), std.view(1, 3, 1, 1).to(device)

    def describe(self) -> dict[str, Any]:
        """What produced the views (goes into the manifest)."""
        return {
            "name": "icgan",
            "model": self.config.model,
            "licence": ICGAN_LICENSE,
            **self.backend.description,
            "truncation": self.settings.truncation,
            "noise": f"truncated normal on [-2t, 2t], {self.backend.dim_z}-d",
            "features": "SwAV ResNet-50, L2-normalised" if not self.tiny else "tiny random conv net",
            "seed": self.config.seed,
            "seeding": "noise from torch.Generator per (image index, view index): view_seed(seed, index, view)",
        }

    @torch.inference_mode()
    def instance_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[n, 3, S, S]`` -> L2-normalised features ``[n, d]``."""
        x = images.to(self.device, torch.float32) / 255.0
        if not self.tiny:
            x = F.interpolate(x, size=_FEATURE_SIZE, mode="bicubic", align_corners=True)
        feats, *_ = self.backend.feature_extractor((x - self.mean) / self.std)
        return feats / torch.linalg.norm(feats, dim=-1, keepdim=True)

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, indices: Sequence[int]) -> np.ndarray:
        """``images`` uint8 ``[n, 3, S, S]`` (dataset indices ``indices``) -> uint8 ``[n, views, S, S, 3]``."""
        from sslaug.augment.generative_views import _resize_hwc, _to_uint8, view_seed

        cfg = self.config
        feats = self.instance_features(images)
        pairs = [(i, v) for i in range(len(images)) for v in range(cfg.views)]
        out = np.empty((len(images), cfg.views, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        for b in range(0, len(pairs), self.batch_size):
            batch = pairs[b : b + self.batch_size]
            seeds = [view_seed(cfg.seed, indices[i], v) for i, v in batch]
            z = torch.stack([truncated_noise(self.backend.dim_z, self.settings.truncation, s) for s in seeds])
            z = z.to(self.device)
            fake = self.backend.generator(z, None, feats[[i for i, _ in batch]])
            pixels = (fake.float() * 0.5 + 0.5).permute(0, 2, 3, 1).cpu().numpy()
            for (i, v), img in zip(batch, _to_uint8(pixels)):
                out[i, v] = _resize_hwc(img, cfg.image_size)
        return out

"""SSL methods: each one small class naming its views, heads and loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sslaug.methods.barlowtwins import BarlowTwins
from sslaug.methods.base import SSLMethod
from sslaug.methods.byol import BYOL
from sslaug.methods.clsa import CLSA
from sslaug.methods.dino import DINO, DINOv2
from sslaug.methods.mocov2 import MoCoV2
from sslaug.methods.mocov3 import MoCoV3
from sslaug.methods.msr import BYOLMSR, SimSiamMSR
from sslaug.methods.rescue import Rescue
from sslaug.methods.simclr import SimCLR
from sslaug.methods.simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {
    cls.name: cls for cls in (SimCLR, BYOL, MoCoV2, MoCoV3, SimSiam, BarlowTwins, DINO, DINOv2)
}


def _clsa(name: str, backbone: nn.Module, hparams: dict[str, Any], settings: dict[str, Any]) -> SSLMethod:
    if name != "mocov2":
        raise NotImplementedError(f"CLSA extends MoCo v2 only, not {name!r}")
    return CLSA(backbone, {**hparams, "loss": settings.get("loss", "ddm"), "ddm_weight": settings.get("ddm_weight", 1.0)})


def _rescue(name: str, backbone: nn.Module, hparams: dict[str, Any], settings: dict[str, Any]) -> SSLMethod:
    if name not in ("simclr", "mocov3", "dinov2"):
        raise NotImplementedError(f"Rescue is implemented for SimCLR, MoCo v3 and DINOv2, not {name!r}")
    base = METHODS[name](backbone, hparams)
    reference_batch = dict(settings.get("reference_batch_size") or {}).get(name)
    return Rescue(base, int(settings["k"]), float(settings["s"]), reference_batch)


def _msr(name: str, backbone: nn.Module, hparams: dict[str, Any], settings: dict[str, Any]) -> SSLMethod:
    variants: dict[str, type[SSLMethod]] = {"byol": BYOLMSR, "simsiam": SimSiamMSR}
    if name not in variants:
        raise NotImplementedError(f"MSR is implemented for BYOL and SimSiam, not {name!r}")
    return variants[name](backbone, {**hparams, **settings})


#: Augmentation variants that change the loss: augmentation -> builder(method, backbone, hparams, settings).
AUGMENTATION_METHODS: dict[str, Callable[[str, nn.Module, dict[str, Any], dict[str, Any]], SSLMethod]] = {
    "clsa": _clsa,
    "rescue": _rescue,
    "msr": _msr,
}


def build_method(
    name: str,
    backbone: nn.Module,
    hparams: dict[str, Any],
    augmentation: str = "standard",
    settings: dict[str, Any] | None = None,
) -> SSLMethod:
    """Instantiate a registered method around ``backbone``; an augmentation variant listed in
    ``AUGMENTATION_METHODS`` extends or wraps it (``settings``: the run's options over the
    scale's settings of that augmentation)."""
    if name not in METHODS:
        raise KeyError(f"unknown or not yet implemented method {name!r}; implemented: {sorted(METHODS)}")
    if augmentation in AUGMENTATION_METHODS:
        return AUGMENTATION_METHODS[augmentation](name, backbone, hparams, dict(settings or {}))
    return METHODS[name](backbone, hparams)

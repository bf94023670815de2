"""SSL methods: each one small class naming its views, heads and loss."""

from __future__ import annotations

from typing import Any

from torch import nn

from sslaug.methods.barlowtwins import BarlowTwins
from sslaug.methods.base import SSLMethod
from sslaug.methods.byol import BYOL
from sslaug.methods.mocov2 import MoCoV2
from sslaug.methods.mocov3 import MoCoV3
from sslaug.methods.simclr import SimCLR
from sslaug.methods.simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {cls.name: cls for cls in (SimCLR, BYOL, MoCoV2, MoCoV3, SimSiam, BarlowTwins)}


def build_method(name: str, backbone: nn.Module, hparams: dict[str, Any]) -> SSLMethod:
    """Instantiate a registered method around ``backbone``."""
    if name not in METHODS:
        raise KeyError(f"unknown or not yet implemented method {name!r}; implemented: {sorted(METHODS)}")
    return METHODS[name](backbone, hparams)

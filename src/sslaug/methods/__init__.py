"""SSL methods: each one small class naming its views, heads and loss."""

from __future__ import annotations

from typing import Any

from torch import nn

from sslaug.methods.base import SSLMethod
from sslaug.methods.byol import BYOL
from sslaug.methods.simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {cls.name: cls for cls in (SimCLR, BYOL)}


def build_method(name: str, backbone: nn.Module, hparams: dict[str, Any]) -> SSLMethod:
    """Instantiate a registered method around ``backbone``."""
    if name not in METHODS:
        raise KeyError(f"unknown or not yet implemented method {name!r}; implemented: {sorted(METHODS)}")
    return METHODS[name](backbone, hparams)

"""The method interface the engine trains: backbone + heads + loss + view recipe."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class SSLMethod(nn.Module):
    """A self-supervised method: names its views, owns its heads, computes its loss.

    Subclasses set ``name``, build heads in ``__init__`` and implement ``forward``,
    which maps the augmented views to ``(loss, logs)``. The engine owns everything
    else (loop, AMP, DDP, checkpoints).
    """

    name: str = ""
    #: Number of augmented views the method consumes per image.
    num_views: int = 2

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.hparams = dict(hparams)

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and detached scalar logs for one step; ``progress`` in [0, 1) is step / total."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The online embedding g(f(x)) that Rescue compares (the projector's output by default)."""
        return self.projector(self.backbone(x))

    def frozen_parameters(self, progress: float) -> list[nn.Parameter]:
        """Parameters the engine must not update at this point of training (none by default)."""
        return []

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Hook after each optimiser step (momentum-encoder updates)."""


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` for an EMA target network."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, for parameters and floating buffers."""
    # One fused kernel per dtype and device instead of one per tensor (~330 for a ResNet-50 + heads).
    torch._foreach_lerp_(list(target.parameters()), [p.detach() for p in online.parameters()], 1 - tau)
    floating = [(b_t, b_o) for b_t, b_o in zip(target.buffers(), online.buffers()) if b_t.dtype.is_floating_point]
    if floating:
        torch._foreach_copy_([b for b, _ in floating], [b for _, b in floating])


def cosine_momentum(base_tau: float, progress: float, final_tau: float = 1.0) -> float:
    """BYOL's schedule: tau = final - (final - base) (cos(pi progress) + 1) / 2."""
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * progress) + 1) / 2

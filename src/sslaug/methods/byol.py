"""BYOL (Grill et al. 2020): online network + predictor regress an EMA target network."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.methods.base import SSLMethod, cosine_momentum, ema_update, momentum_copy
from sslaug.methods.heads import mlp_head
from sslaug.methods.losses import cosine_regression_loss


class BYOL(SSLMethod):
    """Hyperparameters: ``proj_hidden_dim``, ``proj_dim``, ``pred_hidden_dim``, ``momentum_base``."""

    name = "byol"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        self.projector = mlp_head(backbone.feature_dim, hparams["proj_hidden_dim"], hparams["proj_dim"])
        self.predictor = mlp_head(hparams["proj_dim"], hparams["pred_hidden_dim"], hparams["proj_dim"])
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)
        self.momentum_base = float(hparams["momentum_base"])

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_backbone(x))

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v1, v2 = views[:2]
        p1, p2 = self.online(v1), self.online(v2)
        z1, z2 = self.target(v1), self.target(v2)
        loss = cosine_regression_loss(p1.float(), z2.float()) + cosine_regression_loss(p2.float(), z1.float())
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        tau = cosine_momentum(self.momentum_base, progress)
        ema_update(self.backbone, self.target_backbone, tau)
        ema_update(self.projector, self.target_projector, tau)

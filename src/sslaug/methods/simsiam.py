"""SimSiam (Chen & He 2021): BYOL without a momentum encoder; stop-gradient on the target."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.methods.base import SSLMethod
from sslaug.methods.heads import mlp_head
from sslaug.methods.losses import cosine_regression_loss


class SimSiam(SSLMethod):
    """Hyperparameters: ``proj_hidden_dim``, ``proj_dim`` (3-layer projector ending in BN),
    ``pred_hidden_dim`` (bottleneck predictor)."""

    name = "simsiam"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        dim = hparams["proj_dim"]
        self.projector = mlp_head(backbone.feature_dim, hparams["proj_hidden_dim"], dim, num_layers=3, last_bn=True)
        self.predictor = mlp_head(dim, hparams["pred_hidden_dim"], dim)

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # SimSiam's L = D(p1, z2)/2 + D(p2, z1)/2 with D = -cos; (2 - 2cos)/4 per term has
        # exactly its gradient (the value is shifted by +1).
        loss = 0.25 * (cosine_regression_loss(p1.float(), z2.float()) + cosine_regression_loss(p2.float(), z1.float()))
        return loss, {"loss": loss.detach()}

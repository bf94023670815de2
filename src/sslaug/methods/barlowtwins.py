"""Barlow Twins (Zbontar et al. 2021): decorrelate the two views' embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.engine.dist import gather_with_grad
from sslaug.methods.base import SSLMethod
from sslaug.methods.heads import mlp_head
from sslaug.methods.losses import barlow_twins_loss


class BarlowTwins(SSLMethod):
    """Hyperparameters: ``proj_hidden_dim``, ``proj_dim`` (3-layer projector), ``lambda_offdiag``."""

    name = "barlowtwins"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        self.projector = mlp_head(backbone.feature_dim, hparams["proj_hidden_dim"], hparams["proj_dim"], num_layers=3)
        self.lambda_offdiag = float(hparams.get("lambda_offdiag", 5e-3))

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # The cross-correlation is over the global batch, as with the paper's all-reduce.
        z_a, z_b = (gather_with_grad(self.projector(self.backbone(v)).float()) for v in views[:2])
        loss = barlow_twins_loss(z_a, z_b, self.lambda_offdiag)
        return loss, {"loss": loss.detach()}

"""SimCLR (Chen et al. 2020): two views, projection MLP, NT-Xent over the global batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.methods.base import SSLMethod
from sslaug.methods.heads import mlp_head
from sslaug.methods.losses import nt_xent_loss


class SimCLR(SSLMethod):
    """Hyperparameters: ``proj_hidden_dim``, ``proj_dim``, ``temperature``."""

    name = "simclr"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        self.projector = mlp_head(backbone.feature_dim, hparams["proj_hidden_dim"], hparams["proj_dim"])
        self.temperature = float(hparams["temperature"])

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_a, z_b = (self.projector(self.backbone(v)) for v in views[:2])
        self.last_embeddings = (z_a, z_b)  # the online g(f(y)) of both views (Rescue's top-k)
        loss = nt_xent_loss(z_a.float(), z_b.float(), self.temperature)
        return loss, {"loss": loss.detach()}

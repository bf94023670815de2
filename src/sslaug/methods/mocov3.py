"""MoCo v3 (Chen et al. 2021): momentum encoder, predictor, in-batch negatives, no queue."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.methods.base import SSLMethod, cosine_momentum, ema_update, momentum_copy
from sslaug.methods.heads import mlp_head
from sslaug.methods.losses import info_nce_in_batch


class MoCoV3(SSLMethod):
    """Hyperparameters: ``proj_hidden_dim``, ``proj_dim`` (3-layer projector ending in BN,
    2-layer for ViT per the paper is a config choice), ``pred_hidden_dim``,
    ``temperature`` (0.2 R50 / 0.2 ViT), ``momentum_base`` (0.99 R50, 0.99 ViT; cosine to 1)."""

    name = "mocov3"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        dim = hparams["proj_dim"]
        layers = int(hparams.get("proj_layers", 3))
        self.projector = mlp_head(backbone.feature_dim, hparams["proj_hidden_dim"], dim, num_layers=layers, last_bn=True)
        self.predictor = mlp_head(dim, hparams["pred_hidden_dim"], dim, last_bn=True)
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)
        self.temperature = float(hparams["temperature"])
        self.momentum_base = float(hparams["momentum_base"])

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v1, v2 = views[:2]
        z1, z2 = (self.projector(self.backbone(v)) for v in (v1, v2))
        self.last_embeddings = (z1, z2)  # the online g(f(y)) of both views (Rescue's top-k)
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1, k2 = (self.target_projector(self.target_backbone(v)) for v in (v1, v2))
        loss = info_nce_in_batch(q1.float(), k2.float(), self.temperature) + info_nce_in_batch(
            q2.float(), k1.float(), self.temperature
        )
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        tau = cosine_momentum(self.momentum_base, progress)
        ema_update(self.backbone, self.target_backbone, tau)
        ema_update(self.projector, self.target_projector, tau)

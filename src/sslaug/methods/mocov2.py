"""MoCo v2 (Chen et al. 2020b): momentum key encoder, queue of negatives, MLP head, shuffled BN."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.methods.base import SSLMethod, ema_update, momentum_copy
from sslaug.methods.losses import info_nce_with_queue
from sslaug.methods.queue import KeyQueue
from sslaug.methods.shuffle_bn import convert_split_bn, shuffled_forward


def moco_v2_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's projection head: Linear-ReLU-Linear, no BN (Chen et al. 2020b)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class MoCoV2(SSLMethod):
    """Hyperparameters: ``proj_hidden_dim``, ``proj_dim``, ``temperature``, ``queue_size``,
    ``momentum`` (constant, 0.999), ``bn_splits`` (BN groups emulating GPUs in one
    process), ``symmetric`` (both views as query, as MSR's baselines)."""

    name = "mocov2"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(convert_split_bn(backbone, int(hparams.get("bn_splits", 1))), hparams)
        self.projector = moco_v2_head(backbone.feature_dim, hparams["proj_hidden_dim"], hparams["proj_dim"])
        self.key_encoder = momentum_copy(nn.Sequential(self.backbone, self.projector))
        self.queue = KeyQueue(int(hparams["queue_size"]), hparams["proj_dim"])
        self.temperature = float(hparams["temperature"])
        self.momentum = float(hparams["momentum"])
        self.symmetric = bool(hparams.get("symmetric", False))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v1, v2 = views[:2]
        k2 = shuffled_forward(self.key_encoder, v2).float()
        loss = info_nce_with_queue(self.query(v1).float(), k2, self.queue.keys, self.temperature)
        keys = [k2]
        if self.symmetric:
            k1 = shuffled_forward(self.key_encoder, v1).float()
            loss = 0.5 * (loss + info_nce_with_queue(self.query(v2).float(), k1, self.queue.keys, self.temperature))
            keys.append(k1)
        self._pending_keys = torch.cat(keys)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        # Keys enter the queue after the step, so this step's negatives exclude them (MoCo Alg. 1).
        self.queue.enqueue(self._pending_keys)
        ema_update(nn.Sequential(self.backbone, self.projector), self.key_encoder, self.momentum)

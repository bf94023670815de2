"""CLSA (Wang & Qi 2021): MoCo v2 plus strongly augmented queries trained by DDM.

The view maker supplies ``[query view, key view, *strong views]`` (see
``sslaug.engine.pretrain.build_view_maker``). The MoCo v2 InfoNCE loss is computed on
the query and key as usual; every extra strong view adds, weighted by the balancing
coefficient beta, either the DDM loss against the weak query (CLSA) or a plain InfoNCE
of the strong query against the key (Table 4 "with contrastive loss"). Only keys of the
key encoder are enqueued, once per step; strong queries never are (Algorithm 1, line 9).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.methods.losses import ddm_loss, info_nce_with_queue
from sslaug.methods.mocov2 import MoCoV2
from sslaug.methods.shuffle_bn import shuffled_forward

EXTRA_LOSSES = ("ddm", "contrastive", "none")


class CLSA(MoCoV2):
    """MoCo v2 hyperparameters plus ``loss`` (ddm | contrastive | none) and ``ddm_weight``
    (beta, 1.0 in the paper). The DDM temperature is MoCo's (both 0.2 in the paper)."""

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        self.extra_loss = str(hparams.get("loss", "ddm"))
        if self.extra_loss not in EXTRA_LOSSES:
            raise ValueError(f"CLSA loss {self.extra_loss!r} unknown; use one of {EXTRA_LOSSES}")
        if self.symmetric:
            raise ValueError("CLSA follows MoCo v2's asymmetric loss; set symmetric: false")
        self.ddm_weight = float(hparams.get("ddm_weight", 1.0))

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        query_view, key_view, strong_views = views[0], views[1], views[2:]
        key = shuffled_forward(self.key_encoder, key_view).float()
        query = self.query(query_view).float()
        queue = self.queue.keys
        contrastive = info_nce_with_queue(query, key, queue, self.temperature)
        extra = torch.zeros((), device=query.device)
        for view in strong_views if self.extra_loss != "none" else ():
            strong = self.query(view).float()
            if self.extra_loss == "ddm":
                extra = extra + ddm_loss(query, strong, key, queue, self.temperature)
            else:
                extra = extra + info_nce_with_queue(strong, key, queue, self.temperature)
        loss = contrastive + self.ddm_weight * extra
        self._pending_keys = key
        return loss, {"loss": loss.detach(), "loss_contrastive": contrastive.detach(), "loss_strong": extra.detach()}

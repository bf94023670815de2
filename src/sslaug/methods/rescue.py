"""Rescuing easy samples (Rescue, Alg. 1): a top-k strong-view regulariser on any two-view method.

The base method (SimCLR, MoCo v3, DINOv2) computes its own loss on its views and
exposes the online embeddings ``z_a, z_b`` of the two common views as ``last_embeddings``:
g(f(y)), the projector outputs, for SimCLR and MoCo v3; for DINOv2, whose text says only
that "the features are readily available", our choice is the student's L2-normalised DINO
head bottleneck of the two global crops (its projector output before the prototypes). The
k pairs with the highest cosine similarity ``CS(z_a, z_b)`` get their strong view
(RandAugment + Cutout, made for the whole batch by the view maker as the third view; only
the k selected ones are forwarded through ``base.embed``) and
``L = L_SSL + s * L_topk``, ``L_topk = -mean CS(z_a[topk], z_s)``.
Views: ``[view a, view b, strong view, *more views of the base (DINOv2's local crops)]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslaug.methods.base import SSLMethod


def top_k_easiest(z_a: torch.Tensor, z_b: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` pairs whose embeddings are most similar (cosine), most similar first."""
    similarity = F.cosine_similarity(z_a.detach().float(), z_b.detach().float(), dim=1)
    return similarity.topk(min(k, similarity.shape[0])).indices


def scaled_k(k: int, batch: int, reference_batch: int | None) -> int:
    """k for this process's batch: the paper's count at its batch ``reference_batch``
    (N/k is what transfers, Sec. 5: "k = N/64 as a rule of thumb"); at least 2, since the
    heads' BatchNorm needs two samples in training."""
    if reference_batch:
        k = round(k * batch / reference_batch)
    return max(2, min(int(k), batch))


class Rescue(SSLMethod):
    """Wraps ``base``. Hyperparameters: ``k`` (count at ``reference_batch_size``), ``s``."""

    def __init__(self, base: SSLMethod, k: int, s: float, reference_batch_size: int | None = None) -> None:
        nn.Module.__init__(self)
        self.base = base
        self.hparams = dict(base.hparams, k=k, s=s, reference_batch_size=reference_batch_size)
        self.k = int(k)
        self.s = float(s)
        self.reference_batch_size = reference_batch_size
        self.name = base.name

    @property
    def backbone(self) -> nn.Module:  # type: ignore[override]
        return self.base.backbone

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss_ssl, logs = self.base([*views[:2], *views[3:]], progress)
        z_a, z_b = self.base.last_embeddings
        self.base.last_embeddings = None
        index = top_k_easiest(z_a, z_b, scaled_k(self.k, z_a.shape[0], self.reference_batch_size))
        z_s = self.base.embed(views[2][index])
        loss_topk = -F.cosine_similarity(z_a[index].float(), z_s.float(), dim=1).mean()
        loss = loss_ssl + self.s * loss_topk
        return loss, {**logs, "loss": loss.detach(), "loss_ssl": loss_ssl.detach(), "loss_topk": loss_topk.detach()}

    def frozen_parameters(self, progress: float) -> list[nn.Parameter]:
        return self.base.frozen_parameters(progress)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.base.after_step(progress)

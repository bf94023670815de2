"""MSR (Bai et al. 2022) on BYOL and SimSiam: aggressive views online, weak views as targets.

The view maker gives four views per image pair, ``[weak1, aggressive1, weak2, aggressive2]``
(multi-stage: each aggressive view is its weak view further transformed, MSR Eq. 3). The
online branch (predictor output) sees only the aggressive views, the target branch only the
weak ones (MSR Eq. 4); the loss is :func:`~sslaug.methods.losses.msr_loss` weighted by
:func:`~sslaug.methods.losses.msr_beta` (Eqs. 5-6).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslaug.methods.base import SSLMethod
from sslaug.methods.byol import BYOL
from sslaug.methods.losses import msr_beta, msr_loss, msr_terms
from sslaug.methods.simsiam import SimSiam


class MSRMixin(SSLMethod):
    """MSR's forward for a Siamese method with ``online(x)`` (predictor output) and a no-grad
    ``target(x)``; list it first among the bases so its ``forward`` replaces the method's.

    Hyperparameters (the table's msr options): ``beta_base`` (required), ``beta_schedule``
    (``cosine``, the paper's default, or ``fixed``).
    """

    num_views = 4
    #: Multiplies Eq. 5 so the loss keeps the scale of the base method's own loss.
    loss_scale = 1.0

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        if "beta_base" not in hparams:
            raise KeyError(f"{self.name}: MSR needs the option beta_base (MSR: 0.3 CIFAR, 0.4 larger sets)")
        self.beta_base = float(hparams["beta_base"])
        self.beta_schedule = str(hparams.get("beta_schedule", "cosine"))
        msr_beta(self.beta_base, 0.0, self.beta_schedule)  # an unknown schedule fails before training

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weak1, aggressive1, weak2, aggressive2 = views
        q1, q2 = self.online(aggressive1), self.online(aggressive2)
        z1, z2 = self.target(weak1), self.target(weak2)
        q1, q2, z1, z2 = q1.float(), q2.float(), z1.float(), z2.float()
        beta = msr_beta(self.beta_base, progress, self.beta_schedule)
        loss = self.loss_scale * msr_loss(q1, q2, z1, z2, beta)
        with torch.no_grad():  # both pair terms, to see which one moves as beta decays
            weak, aggressive = msr_terms(q1, q2, z1, z2)
        logs = {"loss_weak": self.loss_scale * weak, "loss_aggressive": self.loss_scale * aggressive}
        return loss, {"loss": loss.detach(), **logs, "beta": torch.tensor(beta)}


class BYOLMSR(MSRMixin, BYOL):
    """BYOL + MSR (MSR Alg. 1): EMA target network on the weak views, as BYOL's schedule."""

    name = "byol_msr"


class SimSiamMSR(MSRMixin, SimSiam):
    """SimSiam + MSR (MSR App. B, Table 8): the target is the stop-gradient projection of the
    weak view by the same network; halved like this project's SimSiam loss."""

    name = "simsiam_msr"
    loss_scale = 0.5

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

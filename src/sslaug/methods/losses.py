"""SSL losses as pure functions of embeddings (plus thin modules where a method needs one).

Conventions: embeddings are ``[N, D]`` per process; ``gather=True`` uses the negatives
of every process, as the papers' multi-GPU implementations do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sslaug.engine.dist import gather_no_grad, gather_with_grad, rank


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1), averaged over both views.

    Each sample's positive is its other view; the negatives are the other 2N-2 views of
    the global batch. Identical embeddings give ``log(2N - 1)``.
    """
    z_a = F.normalize(z_a, dim=1)
    z_b = F.normalize(z_b, dim=1)
    n = z_a.shape[0]
    all_a = gather_with_grad(z_a) if gather else z_a
    all_b = gather_with_grad(z_b) if gather else z_b
    offset = rank() * n if gather else 0
    labels = torch.arange(n, device=z_a.device) + offset
    self_mask = F.one_hot(labels, all_a.shape[0]).bool()

    def side(z: torch.Tensor, same: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        logits_same = (z @ same.T / temperature).masked_fill(self_mask, float("-inf"))
        logits = torch.cat([z @ other.T / temperature, logits_same], dim=1)
        return F.cross_entropy(logits, labels)

    return 0.5 * (side(z_a, all_a, all_b) + side(z_b, all_b, all_a))


def cosine_regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE, ``2 - 2 cos(p, z)`` (Grill et al. 2020, Eq. 2); target is detached."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


class NTXentLoss(nn.Module):
    """Thin module around :func:`nt_xent_loss`."""

    def __init__(self, temperature: float = 0.5, gather: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z_a, z_b, self.temperature, self.gather)


def info_nce_with_queue(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, Eq. 1): positive = the key, negatives = the queue.

    ``query`` and ``key`` are ``[N, D]``, ``queue`` is ``[K, D]``; all are L2-normalised here.
    """
    query = F.normalize(query, dim=1)
    key = F.normalize(key.detach(), dim=1)
    positives = (query * key).sum(dim=1, keepdim=True)
    negatives = query @ F.normalize(queue, dim=1).T
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device))


def info_nce_in_batch(query: torch.Tensor, key: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """MoCo v3's InfoNCE (Chen et al. 2021, Alg. 1): the other keys of the global batch are the
    negatives; scaled by 2T as in the paper's pseudocode."""
    query = F.normalize(query, dim=1)
    key = F.normalize(key.detach(), dim=1)
    all_keys = gather_with_grad(key) if gather else key
    offset = rank() * query.shape[0] if gather else 0
    logits = query @ all_keys.T / temperature
    labels = torch.arange(query.shape[0], device=query.device) + offset
    return 2 * temperature * F.cross_entropy(logits, labels)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambda_offdiag: float = 5e-3) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, Eq. 1) on the batch cross-correlation matrix."""
    n = z_a.shape[0]
    z_a = (z_a - z_a.mean(0)) / z_a.std(0, unbiased=False).clamp_min(1e-6)
    z_b = (z_b - z_b.mean(0)) / z_b.std(0, unbiased=False).clamp_min(1e-6)
    c = z_a.T @ z_b / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


def msr_beta(beta_base: float, progress: float, schedule: str = "cosine") -> float:
    """MSR's weight of the aggressive-aggressive terms (MSR Eq. 6).

    ``cosine``: ``beta_base * (cos(pi k / K) + 1) / 2`` with ``progress = k / K`` (the paper's
    default, "Decay" in MSR Table 1); ``fixed``: ``beta_base`` throughout ("Fixed").
    """
    if schedule == "cosine":
        return beta_base * (math.cos(math.pi * progress) + 1) / 2
    if schedule == "fixed":
        return beta_base
    raise ValueError(f"unknown beta_schedule {schedule!r}; use 'cosine' or 'fixed'")


def msr_terms(
    q1_aggr: torch.Tensor, q2_aggr: torch.Tensor, z1_weak: torch.Tensor, z2_weak: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSR's two pair terms, each summed over both sides: ``(weak, aggressive)``.

    ``weak = mse(q1a, z2w) + mse(q2a, z1w)`` regresses each aggressive view's prediction onto
    the other image's weak-view target; ``aggressive = mse(q1a, sg(q2a)) + mse(q2a, sg(q1a))``
    onto the other aggressive view's detached prediction (MSR avoids an extra target pass).
    ``mse = 2 - 2 cos`` (MSR Eq. 2); every target is detached.
    """
    weak = cosine_regression_loss(q1_aggr, z2_weak) + cosine_regression_loss(q2_aggr, z1_weak)
    aggressive = cosine_regression_loss(q1_aggr, q2_aggr) + cosine_regression_loss(q2_aggr, q1_aggr)
    return weak, aggressive


def msr_loss(
    q1_aggr: torch.Tensor, q2_aggr: torch.Tensor, z1_weak: torch.Tensor, z2_weak: torch.Tensor, beta: float
) -> torch.Tensor:
    """MSR's four-term loss (MSR Eq. 5): per side ``beta * mse(q1a, sg(q2a)) + (1 - beta) *
    mse(q1a, z2w)``, symmetric over the two images (see :func:`msr_terms`)."""
    weak, aggressive = msr_terms(q1_aggr, q2_aggr, z1_weak, z2_weak)
    return beta * aggressive + (1 - beta) * weak


def ddm_loss(
    weak_query: torch.Tensor,
    strong_query: torch.Tensor,
    keys: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    gather: bool = True,
) -> torch.Tensor:
    """CLSA's distributional divergence minimisation (Wang & Qi 2021, Eq. 3-4).

    Candidates are ``[keys of the whole (global) batch ; queue]``; the weak query's
    distribution ``softmax(sim / T)`` over them is the detached target of the strong
    query's: ``-mean_n sum_c p_weak log p_strong``. All inputs are L2-normalised here.
    """
    keys = F.normalize(keys.detach(), dim=1)
    all_keys = gather_no_grad(keys) if gather else keys
    candidates = torch.cat([all_keys, F.normalize(queue.detach(), dim=1)])
    weak = F.normalize(weak_query, dim=1)
    strong = F.normalize(strong_query, dim=1)
    p_weak = torch.softmax(weak.detach() @ candidates.T / temperature, dim=1)
    log_p_strong = torch.log_softmax(strong @ candidates.T / temperature, dim=1)
    return -(p_weak * log_p_strong).sum(dim=1).mean()

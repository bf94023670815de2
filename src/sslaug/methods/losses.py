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


# --------------------------------------------------------------------------- DINO / DINOv2


def _all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce when distributed (no-op otherwise)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
        torch.distributed.all_reduce(x, op=reduce_op)
    return x


@torch.no_grad()
def centered_softmax(teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """DINO's teacher targets: softmax((t - center) / temperature) (Caron et al. 2021, Alg. 1)."""
    return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor, temperature: float, iterations: int = 3, num_samples: torch.Tensor | None = None
) -> torch.Tensor:
    """DINOv2's teacher targets: Sinkhorn-Knopp normalisation of exp(t / temperature) (SwAV; Oquab
    et al. 2023, Sec. 4), over the global batch: rows (prototypes) get equal mass, then columns
    (samples) sum to one. ``num_samples`` = the global number of samples (default: the rows of
    every process), as DINOv2 passes the count of masked patches for iBOT."""
    logits = teacher_logits.float() / temperature
    # A shift common to all processes cancels in the normalisation and keeps exp finite.
    shift = _all_reduce(logits.max().detach().clone(), op="max")
    q = torch.exp(logits - shift).t()  # [K, B]
    k = q.shape[0]
    if num_samples is None:
        num_samples = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    q *= num_samples
    return q.t()


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """DINO's centre EMA over the global batch mean of the teacher's logits."""
    batch_center = teacher_logits.float().mean(dim=0, keepdim=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        batch_center = _all_reduce(batch_center) / torch.distributed.get_world_size()
    return center * momentum + batch_center * (1 - momentum)


def dino_loss(teacher_probs: list[torch.Tensor], student_logits: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """DINO's multi-crop cross-entropy (Caron et al. 2021, Eq. 3): every student view against every
    teacher (global) view except the same view, averaged over pairs and samples.

    Args:
        teacher_probs: per global view, ``[B, K]`` teacher targets (centred softmax or Sinkhorn-Knopp).
        student_logits: per view (globals first, in the teacher's order, then locals), ``[B, K]``.
        student_temp: the student's temperature (0.1).
    """
    total = student_logits[0].new_zeros(())
    terms = 0
    for s_index, logits in enumerate(student_logits):
        log_probs = F.log_softmax(logits.float() / student_temp, dim=-1)
        for t_index, probs in enumerate(teacher_probs):
            if s_index == t_index:
                continue
            total = total - (probs * log_probs).sum(dim=-1).mean()
            terms += 1
    if terms == 0:
        raise ValueError("dino_loss needs at least two views (the same view is never its own target)")
    return total / terms


def ibot_patch_loss(
    teacher_probs: torch.Tensor,
    student_logits: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float,
    masked_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """iBOT's masked-patch loss as DINOv2 computes it (Zhou et al. 2022; Oquab et al. 2023).

    Args:
        teacher_probs: ``[M, K]`` teacher targets of the masked patches (unmasked input).
        student_logits: ``[M, K]`` student outputs at the same patches (masked input).
        masks: ``[B, N]`` boolean patch masks of the ``B`` global crops; ``M = masks.sum()``.
        student_temp: the student's temperature.
        masked_index: ``masks.flatten().nonzero()`` if already known (saves a device sync).

    Each image's masked patches are averaged, then summed over images and divided by ``B``
    (unmasked images count as zero), as DINOv2's ``forward_masked``.
    """
    per_patch = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)
    if masked_index is None:
        masked_index = masks.flatten().nonzero().squeeze(1)
    image_weights = 1.0 / masks.sum(dim=1).clamp(min=1)
    weights = image_weights.index_select(0, masked_index // masks.shape[1])
    return (per_patch * weights).sum() / masks.shape[0]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser (Sablayrolles et al. 2019; DINOv2 Sec. 4): -mean log distance of each
    L2-normalised feature to its nearest neighbour in the batch."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.t()
        similarity.fill_diagonal_(-2)
        neighbour = similarity.argmax(dim=1)
    distance = F.pairwise_distance(x, x[neighbour], eps=eps)
    return -(distance + eps).log().mean()

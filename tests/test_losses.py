"""Losses against closed forms and lightly's reference implementations."""

from __future__ import annotations

import math

import pytest
import torch

from sslaug.methods.losses import cosine_regression_loss, nt_xent_loss


def test_nt_xent_identical_embeddings_is_log_2n_minus_1() -> None:
    n = 8
    z = torch.ones(n, 16)
    loss = nt_xent_loss(z, z.clone(), temperature=0.5, gather=False)
    assert loss.item() == pytest.approx(math.log(2 * n - 1), abs=1e-6)


def test_nt_xent_matches_lightly() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    torch.manual_seed(0)
    for temperature in (0.1, 0.5):
        z_a, z_b = torch.randn(32, 64), torch.randn(32, 64)
        ours = nt_xent_loss(z_a, z_b, temperature=temperature, gather=False)
        reference = lightly_loss.NTXentLoss(temperature=temperature)(z_a, z_b)
        assert ours.item() == pytest.approx(reference.item(), abs=1e-5)


def test_nt_xent_falls_when_views_agree() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 32)
    agree = nt_xent_loss(z, z + 0.01 * torch.randn_like(z), gather=False)
    disagree = nt_xent_loss(z, torch.randn_like(z), gather=False)
    assert agree < disagree


def test_cosine_regression_matches_lightly_negative_cosine() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    torch.manual_seed(0)
    p, z = torch.randn(32, 64), torch.randn(32, 64)
    ours = cosine_regression_loss(p, z)
    reference = 2 + 2 * lightly_loss.NegativeCosineSimilarity()(p, z)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)


def test_cosine_regression_does_not_backpropagate_into_target() -> None:
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    cosine_regression_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_queue_resumes_at_its_pointer_after_load_state_dict() -> None:
    """The queue keeps a host copy of its pointer (no device sync per step); a checkpoint load resets it."""
    from sslaug.methods.queue import KeyQueue

    queue = KeyQueue(size=8, dim=4)
    queue.enqueue(torch.randn(3, 4))
    resumed = KeyQueue(size=8, dim=4)
    resumed.enqueue(torch.randn(2, 4))  # its host pointer is now 2
    resumed.load_state_dict(queue.state_dict())
    keys = torch.randn(2, 4)
    resumed.enqueue(keys)
    assert int(resumed.pointer) == 5
    assert torch.allclose(resumed.keys[3:5], torch.nn.functional.normalize(keys, dim=1))

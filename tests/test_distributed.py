"""Distributed semantics under gloo with 2 CPU processes equal one process on the global batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslaug.methods.losses import barlow_twins_loss, info_nce_in_batch, nt_xent_loss, sinkhorn_knopp, updated_center
from sslaug.methods.queue import KeyQueue

WORLD = 2
N, D = 8, 16  # global batch, embedding size


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)


LOSSES = {
    "nt_xent": lambda a, b: nt_xent_loss(a, b, temperature=0.5),
    "info_nce_in_batch": lambda a, b: info_nce_in_batch(a, b, temperature=0.2),
    "barlow_twins": None,  # gathers inside the method; tested through the same gather below
}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    from sslaug.engine.dist import gather_with_grad

    a, b = global_batch()
    local = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    results = {}
    for name in ("nt_xent", "info_nce_in_batch", "barlow_twins"):
        za = a[local].clone().requires_grad_(True)
        zb = b[local].clone().requires_grad_(True)
        if name == "barlow_twins":
            loss = barlow_twins_loss(gather_with_grad(za), gather_with_grad(zb))
        else:
            loss = LOSSES[name](za, zb)
        # DDP averages gradients over processes; do the same to compare with one process.
        (loss / WORLD).backward()
        value = loss.detach().clone()
        dist.all_reduce(value)
        results[name] = {"loss": value / WORLD, "grad_a": za.grad, "grad_b": zb.grad}
    # DINO's centre and DINOv2's Sinkhorn-Knopp normalise over the global batch.
    results["sinkhorn"] = sinkhorn_knopp(a[local], 0.1)
    results["center"] = updated_center(torch.zeros(1, D), a[local], 0.9)
    queue = KeyQueue(size=12, dim=D)
    queue.keys.zero_()
    queue.enqueue(a[local])
    results["queue"] = {"keys": queue.keys.clone(), "pointer": queue.pointer.clone()}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["nt_xent", "info_nce_in_batch", "barlow_twins"])
def test_loss_and_gradients_match_single_process(distributed_results: list[dict], name: str) -> None:
    a, b = global_batch()
    za, zb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    if name == "barlow_twins":
        loss = barlow_twins_loss(za, zb)
    else:
        loss = LOSSES[name](za, zb)
    loss.backward()
    for rank, result in enumerate(distributed_results):
        local = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        assert torch.allclose(result[name]["loss"], loss.detach(), atol=1e-5), f"{name} loss on rank {rank}"
        assert torch.allclose(result[name]["grad_a"], za.grad[local], atol=1e-5), f"{name} grad on rank {rank}"
        if zb.grad is None:  # MoCo v3's keys come from the momentum encoder: no gradient
            assert result[name]["grad_b"] is None
        else:
            assert torch.allclose(result[name]["grad_b"], zb.grad[local], atol=1e-5), f"{name} grad on rank {rank}"


def test_queue_is_fed_with_the_gathered_keys_of_every_process(distributed_results: list[dict]) -> None:
    a, _ = global_batch()
    single = KeyQueue(size=12, dim=D)
    single.keys.zero_()
    single.enqueue(a)
    for result in distributed_results:
        assert torch.allclose(result["queue"]["keys"], single.keys, atol=1e-6)
        assert int(result["queue"]["pointer"]) == int(single.pointer) == N


def test_dino_centre_and_sinkhorn_knopp_use_the_global_batch(distributed_results: list[dict]) -> None:
    a, _ = global_batch()
    targets = sinkhorn_knopp(a, 0.1)
    center = updated_center(torch.zeros(1, D), a, 0.9)
    for rank, result in enumerate(distributed_results):
        local = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        assert torch.allclose(result["sinkhorn"], targets[local], atol=1e-5), f"Sinkhorn-Knopp rows on rank {rank}"
        assert torch.allclose(result["center"], center, atol=1e-6), f"centre on rank {rank}"

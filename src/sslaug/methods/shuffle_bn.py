"""MoCo's shuffling BN: the key encoder must not see its query's batch statistics.

MoCo (He et al. 2020, Sec. 3.3) shuffles the key batch across GPUs before the key
encoder and unshuffles after, so a query and its key never share a BN batch. Across
processes this gathers, permutes and scatters the global batch; inside one process it
emulates several GPUs by normalising ``bn_splits`` groups of the shuffled batch
separately (as in the MoCo authors' single-GPU CIFAR demo).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslaug.engine import dist


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d computing statistics over ``num_splits`` equal groups of the batch in training."""

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.num_splits:
            raise ValueError(f"batch {n} not divisible into {self.num_splits} BN groups")
        # One BN over [N/S, C*S, H, W]: each group's channels get their own statistics.
        running_mean = self.running_mean.repeat(self.num_splits)
        running_var = self.running_var.repeat(self.num_splits)
        out = F.batch_norm(
            x.view(n // self.num_splits, c * self.num_splits, h, w),
            running_mean,
            running_var,
            self.weight.repeat(self.num_splits),
            self.bias.repeat(self.num_splits),
            True,
            self.momentum,
            self.eps,
        ).view(n, c, h, w)
        self.running_mean.copy_(running_mean.view(self.num_splits, c).mean(0))
        self.running_var.copy_(running_var.view(self.num_splits, c).mean(0))
        return out


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` by a SplitBatchNorm2d with the same state."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            convert_split_bn(child, num_splits)
    return module


@torch.no_grad()
def shuffled_forward(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``encoder(x)`` computed on a randomly permuted batch and returned in the original order.

    Across processes the permutation spans the global batch (MoCo's
    ``_batch_shuffle_ddp``); in one process it is a local permutation, which together
    with SplitBatchNorm2d puts a sample in a BN group other than its query's.
    """
    if dist.is_distributed():
        local = x.shape[0]
        gathered = dist.gather_no_grad(x)
        permutation = torch.randperm(gathered.shape[0], device=x.device)
        torch.distributed.broadcast(permutation, src=0)
        inverse = torch.argsort(permutation)
        mine = permutation.view(dist.world_size(), local)[dist.rank()]
        out = dist.gather_no_grad(encoder(gathered[mine]))
        return out[inverse].view(dist.world_size(), local, -1)[dist.rank()]
    permutation = torch.randperm(x.shape[0], device=x.device)
    out = encoder(x[permutation])
    return out[torch.argsort(permutation)]

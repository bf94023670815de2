"""MoCo's memory queue of negative keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslaug.engine.dist import gather_no_grad


class KeyQueue(nn.Module):
    """A ring buffer of ``size`` L2-normalised keys; enqueues the keys of the whole global batch.

    Stored as buffers, so the queue is part of every checkpoint and resumes exactly.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self._host_pointer: int | None = None  # a host copy: reading the buffer each step would sync

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._host_pointer = None  # resumed: read the restored buffer once

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries by ``keys`` gathered from every process (MoCo Alg. 1)."""
        keys = F.normalize(gather_no_grad(keys.detach().float()), dim=1)
        size = self.keys.shape[0]
        n = keys.shape[0]
        if n > size:
            raise ValueError(f"global batch {n} larger than the queue {size}")
        if self._host_pointer is None:
            self._host_pointer = int(self.pointer)
        start = self._host_pointer
        index = (torch.arange(n, device=keys.device) + start) % size
        self.keys[index] = keys
        self._host_pointer = (start + n) % size
        self.pointer.fill_(self._host_pointer)

"""The training loop shared by every method.

Owns: device and DDP set-up, AMP (bf16) and channels_last on GPU, the optimiser and
its warm-up + cosine schedule, checkpoints (atomic, at an interval and at the end),
resume from the last checkpoint, seeded determinism, progress bar, per-step metrics
to CSV and TensorBoard, and stopping on a non-finite loss.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from sslaug.augment.view_maker import ViewMaker
from sslaug.engine import dist
from sslaug.engine.batches import BatchSource
from sslaug.io import atomic_torch_save
from sslaug.methods.base import SSLMethod
from sslaug.models.backbones import vit_lr_scales

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops before anything is overwritten."""


@dataclass
class TrainConfig:
    """Optimisation settings of one pretraining run (values come from the scale config)."""

    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    base_lr: float = 0.03
    #: "linear": lr = base_lr * batch_size / 256 (Goyal et al.), "sqrt": lr = base_lr *
    #: sqrt(batch_size / 1024) (DINOv2's "sqrt_wrt_1024"), "none": lr = base_lr.
    lr_scaling: str = "linear"
    weight_decay: float = 1e-4
    #: Cosine schedule of the weight decay from ``weight_decay`` to this value (DINO: 0.04 -> 0.4);
    #: None keeps it constant.
    weight_decay_end: float | None = None
    #: Clip the global gradient norm to this value (DINO / DINOv2: 3.0); 0 disables.
    clip_grad: float = 0.0
    #: ViT layer-wise lr decay: block i of L gets ``layer_decay ** (L - i)`` of the lr (DINOv2: 0.9).
    layer_decay: float = 1.0
    #: Extra lr factor of a ViT's patch embedding (DINOv2: 0.2).
    patch_embed_lr_mult: float = 1.0
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    #: Exclude biases and norm parameters from weight decay and LARS adaptation.
    exclude_bias_norm: bool = True
    #: SimSiam's fixed predictor lr (Chen & He 2021, Sec. 4.2): the predictor keeps the peak
    #: lr (no warm-up, no decay); set by the table option ``fix_pred_lr``.
    fix_pred_lr: bool = False
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 15.0
    log_every_steps: int = 10
    num_workers: int = 4
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lr(self) -> float:
        if self.lr_scaling == "linear":
            return self.base_lr * self.batch_size / 256
        if self.lr_scaling == "sqrt":
            return self.base_lr * math.sqrt(self.batch_size / 1024)
        if self.lr_scaling == "none":
            return self.base_lr
        raise ValueError(f"unknown lr_scaling {self.lr_scaling!r}; use 'linear', 'sqrt' or 'none'")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warm-up from 0 to ``peak``, then cosine decay to ``floor``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def cosine_value(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine schedule from ``start`` at step 0 to ``end`` at the last step (DINO's weight decay)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / max(1, total_steps)))


def build_optimizer(
    param_groups: list[dict[str, Any]], name: str, lr: float, momentum: float, fused: bool
) -> torch.optim.Optimizer:
    """SGD and AdamW from torch (fused kernels on CUDA), LARS from timm.

    timm's LARS skips the trust ratio for groups with weight decay 0, i.e. biases and
    norm parameters, as SimCLR and BYOL do.
    """
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, fused=fused or None)
    if name == "lars":
        from timm.optim import Lars  # lazily: importing timm costs ~2 s

        return Lars(param_groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; use sgd, adamw or lars")


def _param_groups(
    model: nn.Module,
    weight_decay: float,
    exclude_bias_norm: bool,
    fixed_lr: nn.Module | None = None,
    lr_scales: dict[int, float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups by weight decay (none for biases and norms), fixed lr (``fixed_lr``'s
    parameters, marked ``fix_lr``) and lr multiplier (``lr_scales``: ``id(parameter)`` -> factor)."""
    fixed = {id(p) for p in fixed_lr.parameters()} if fixed_lr is not None else set()
    groups: dict[tuple[float, bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if exclude_bias_norm and p.ndim <= 1 else weight_decay
        key = (wd, id(p) in fixed, (lr_scales or {}).get(id(p), 1.0))
        groups.setdefault(key, []).append(p)
    return [
        {"params": params, "weight_decay": wd, **({"fix_lr": True} if fix else {}), "lr_scale": scale}
        for (wd, fix, scale), params in groups.items()
    ]


class MetricsWriter:
    """Per-step metrics to ``metrics.csv`` (and TensorBoard); rows past a resume point are dropped."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.path = run_dir / "metrics.csv"
        rows: list[dict[str, str]] = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < resume_step]
        self.fields: list[str] | None = list(rows[0].keys()) if rows else None
        self.file = open(self.path, "w", newline="")
        if rows:
            writer = csv.DictWriter(self.file, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step or None)
        except ImportError:  # TensorBoard is optional; CSV is the record.
            log.warning("tensorboard not installed: metrics go to metrics.csv only")

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: f"{v:.6g}" for k, v in values.items()}}
        if self.fields is None:
            self.fields = list(row)
            csv.DictWriter(self.file, fieldnames=self.fields).writeheader()
        csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(f"pretrain/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tensorboard is not None:
                self.tensorboard.close()


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (augmentations draw from them)."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class Trainer:
    """Trains one :class:`SSLMethod` on one dataset, resumable from ``run_dir/checkpoint.pt``."""

    def __init__(
        self,
        method: SSLMethod,
        view_maker: ViewMaker,
        data: BatchSource,
        config: TrainConfig,
        run_dir: str | Path,
        device: torch.device,
        seed: int,
        fingerprint: str,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.seed = seed
        self.fingerprint = fingerprint
        self.data = data
        self.is_main = dist.rank() == 0
        self.cuda = device.type == "cuda"
        self.method = method.to(device)
        if self.cuda and config.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.view_maker = view_maker.to(device)
        self.model: nn.Module = self.method
        if dist.is_distributed():
            if self.cuda:  # SyncBN: BN statistics over the global batch (CUDA only in PyTorch)
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            self.model = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[device.index] if self.cuda else None
            )
        if config.compile:
            self.model = torch.compile(self.model)
        fixed_lr = None
        if config.fix_pred_lr:
            fixed_lr = getattr(self.method, "predictor", None)
            if not isinstance(fixed_lr, nn.Module):
                raise ValueError(f"fix_pred_lr: method {self.method.name!r} has no predictor")
        lr_scales = None
        if config.layer_decay != 1.0 or config.patch_embed_lr_mult != 1.0:
            if not hasattr(self.method.backbone, "blocks"):
                raise ValueError("layer_decay / patch_embed_lr_mult apply to ViT backbones only")
            lr_scales = vit_lr_scales(self.method.backbone, config.layer_decay, config.patch_embed_lr_mult)
        self.optimizer = build_optimizer(
            _param_groups(self.method, config.weight_decay, config.exclude_bias_norm, fixed_lr, lr_scales),
            config.optimizer,
            lr=config.lr,
            momentum=config.momentum,
            fused=self.cuda,
        )
        self.steps_per_epoch = data.steps_per_epoch
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(config.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.last_checkpoint_time = time.monotonic()

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Write model, optimiser and RNG state at the current step (rank 0, atomic)."""
        if not self.is_main:
            return
        state = {
            "step": self.step,
            "fingerprint": self.fingerprint,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.cuda else None,
        }
        atomic_torch_save(state, self.checkpoint_path)
        self.last_checkpoint_time = time.monotonic()

    def try_resume(self) -> None:
        """Continue from ``checkpoint.pt`` when it belongs to this run's configuration."""
        if not self.checkpoint_path.exists():
            return
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            stale = self.checkpoint_path.with_name("checkpoint.stale.pt")
            if self.is_main:
                os.replace(self.checkpoint_path, stale)
            log.warning("checkpoint was written for another configuration; kept as %s, starting afresh", stale)
            return
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if self.cuda and state["rng_cuda"] is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d / %d", self.checkpoint_path, self.step, self.total_steps)

    def _checkpoint_due(self) -> bool:
        c = self.config
        if c.checkpoint_every_steps and self.step % c.checkpoint_every_steps == 0:
            return True
        return bool(c.checkpoint_every_minutes) and (
            time.monotonic() - self.last_checkpoint_time >= 60 * c.checkpoint_every_minutes
        )

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> None:
        """Train to ``epochs``; resumes first if a matching checkpoint exists."""
        self.try_resume()
        metrics = MetricsWriter(self.run_dir, self.step, self.is_main)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.config.precision == "bf16")
        progress_bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.is_main,
            mininterval=1 if sys.stderr.isatty() else 30,
            desc="pretrain",
        )
        self.model.train()
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        logs_sum: dict[str, torch.Tensor] = {}
        logged_steps = 0
        window_start = time.perf_counter()
        try:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                for batch, indices in self.data.epoch(epoch, start):
                    lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.config.lr, self.config.min_lr)
                    weight_decay = self._weight_decay_at(self.step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = (self.config.lr if group.get("fix_lr") else lr) * group.get("lr_scale", 1.0)
                        if weight_decay is not None and group["weight_decay"] > 0:
                            group["weight_decay"] = weight_decay
                    progress = self.step / self.total_steps
                    views = self.view_maker(batch, indices, epoch)
                    if self.cuda and self.config.channels_last:
                        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                    with autocast:
                        loss, logs = self.model(views, progress)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    for parameter in self.method.frozen_parameters(progress):
                        parameter.grad = None  # the optimiser skips it entirely (no decay, no momentum)
                    if self.config.clip_grad > 0:
                        nn.utils.clip_grad_norm_(self.method.parameters(), self.config.clip_grad)
                    self.optimizer.step()
                    self.method.after_step(progress)
                    nonfinite |= ~torch.isfinite(loss.detach())
                    for key, value in logs.items():
                        logs_sum[key] = logs_sum.get(key, 0) + value.float()
                    logged_steps += 1
                    self.step += 1
                    progress_bar.update(1)
                    last_step = self.step == self.total_steps
                    if self.step % self.config.log_every_steps == 0 or last_step:
                        self._check_finite(nonfinite)  # the only host sync, once per log window
                        seconds = time.perf_counter() - window_start
                        values = {k: (v / logged_steps).item() for k, v in logs_sum.items()}
                        values.update(
                            lr=lr,
                            epoch=epoch,
                            images_per_s=logged_steps * self.config.batch_size / max(seconds, 1e-9),
                        )
                        metrics.write(self.step, values)
                        progress_bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")
                        logs_sum, logged_steps, window_start = {}, 0, time.perf_counter()
                    if not last_step and self._checkpoint_due():
                        self._check_finite(nonfinite)
                        self.save_checkpoint()
            self._check_finite(nonfinite)
            self.save_checkpoint()
        finally:
            progress_bar.close()
            metrics.close()

    def _weight_decay_at(self, step: int) -> float | None:
        """The scheduled weight decay of the decayed groups, or None when it is constant."""
        if self.config.weight_decay_end is None:
            return None
        return cosine_value(step, self.total_steps, self.config.weight_decay, self.config.weight_decay_end)

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        if bool(nonfinite):
            raise NonFiniteLossError(
                f"loss became NaN/inf before step {self.step} of {self.total_steps} in {self.run_dir}; "
                f"the last good checkpoint ({self.checkpoint_path}) is kept. Lower the learning rate "
                f"(currently {self.config.lr:g}) or check the data."
            )

    def train_config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


def fingerprint_of(spec: dict[str, Any]) -> str:
    """A stable text identity of everything that determines the run's result."""
    return json.dumps(spec, sort_keys=True, default=str)

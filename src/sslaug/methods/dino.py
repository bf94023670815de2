"""DINO (Caron et al. 2021) and DINOv2 (Oquab et al. 2023): self-distillation with no labels.

A student (backbone + DINO head) matches the softmax of an EMA teacher over ``out_dim``
prototypes across multi-crop views: two global crops (the teacher's inputs) and any number
of local crops (the student's only). DINO centres and sharpens the teacher's outputs; DINOv2
normalises them with Sinkhorn-Knopp and adds the iBOT masked-patch loss (student patches of
masked global crops predict the teacher's patches) and the KoLeo regulariser on the
student's class tokens.

Views, as the view maker orders them: ``[global 1, global 2, local 1, ..., local n]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslaug.engine.dist import world_size
from sslaug.methods.base import SSLMethod, cosine_momentum, ema_update, momentum_copy
from sslaug.methods.heads import DINOHead
from sslaug.methods.losses import (
    centered_softmax,
    dino_loss,
    ibot_patch_loss,
    koleo_loss,
    sinkhorn_knopp,
    updated_center,
)
from sslaug.models.backbones import vit_tokens

CENTERINGS = ("mean", "sinkhorn_knopp")


def teacher_temperature(hparams: dict[str, Any], progress: float) -> float:
    """Linear warm-up of the teacher temperature from ``warmup_teacher_temp`` to ``teacher_temp``
    over ``warmup_teacher_temp_epochs`` of the run's ``epochs`` (DINO Sec. 3.1; 0.04 -> 0.07 over 30)."""
    final = float(hparams["teacher_temp"])
    warmup_epochs = float(hparams.get("warmup_teacher_temp_epochs", 0))
    if warmup_epochs <= 0:
        return final
    epoch = progress * float(hparams["epochs"])
    start = float(hparams.get("warmup_teacher_temp", final))
    return start + (final - start) * min(1.0, epoch / warmup_epochs)


def block_masks(
    num_images: int,
    grid: tuple[int, int],
    ratio_range: tuple[float, float],
    probability: float,
    device: torch.device,
) -> torch.Tensor:
    """iBOT / DINOv2 patch masks ``[num_images, h * w]``: a ``probability`` share of the images is
    masked, with mask ratios spread over ``ratio_range`` as DINOv2's collate spreads them.

    Our choice for the shape: each masked image gets the ``count`` patches where a smooth random
    field (bilinearly upsampled coarse noise) is highest, which gives blob-shaped blocks and the
    exact count, batched on the device, instead of BEiT's sequential rectangle sampler on the host.
    """
    h, w = grid
    patches = h * w
    masked = max(1, int(num_images * probability)) if probability > 0 else 0
    masks = torch.zeros(num_images, patches, dtype=torch.bool, device=device)
    if masked == 0:
        return masks
    bounds = torch.linspace(ratio_range[0], ratio_range[1], masked + 1, device=device)
    ratios = bounds[:-1] + (bounds[1:] - bounds[:-1]) * torch.rand(masked, device=device)
    counts = (ratios * patches).long().clamp(min=1)
    coarse = torch.rand(masked, 1, max(1, math.ceil(h / 3)), max(1, math.ceil(w / 3)), device=device)
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).flatten(1)
    field = field + 1e-3 * torch.rand_like(field)  # break ties inside flat regions
    rank = field.argsort(dim=1, descending=True).argsort(dim=1)
    masks[:masked] = rank < counts[:, None]
    return masks[torch.randperm(num_images, device=device)]


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device without waiting for the device (pinned, non-blocking on CUDA)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _select(patches: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """Rows ``flat_index`` of ``patches`` ``[B, N, D]`` flattened to ``[B * N, D]`` (= ``patches[masks]``)."""
    return patches.flatten(0, 1).index_select(0, flat_index)


class DINO(SSLMethod):
    """Hyperparameters: ``head_hidden_dim``, ``head_bottleneck_dim``, ``head_out_dim`` (prototypes),
    ``head_layers``, ``norm_last_layer``, ``student_temp``, ``teacher_temp``,
    ``warmup_teacher_temp``, ``warmup_teacher_temp_epochs``, ``momentum_base`` (cosine to 1),
    ``centering`` (``mean`` with ``center_momentum``, or ``sinkhorn_knopp``),
    ``freeze_last_layer_epochs``; ``epochs`` is the run's length (set by the engine)."""

    name = "dino"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        super().__init__(backbone, hparams)
        self.head = DINOHead(
            backbone.feature_dim,
            hidden_dim=int(hparams["head_hidden_dim"]),
            bottleneck_dim=int(hparams["head_bottleneck_dim"]),
            out_dim=int(hparams["head_out_dim"]),
            num_layers=int(hparams.get("head_layers", 3)),
            norm_last_layer=bool(hparams.get("norm_last_layer", True)),
        )
        self.target_backbone = momentum_copy(backbone)
        self.target_head = momentum_copy(self.head)
        self.centering = str(hparams.get("centering", "mean"))
        if self.centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, not {self.centering!r}")
        self.student_temp = float(hparams["student_temp"])
        self.center_momentum = float(hparams.get("center_momentum", 0.9))
        self.momentum_base = float(hparams["momentum_base"])
        self.register_buffer("center", torch.zeros(1, int(hparams["head_out_dim"])))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The student's bottleneck embedding of ``x`` (Rescue's z)."""
        return self.head.embed(self.backbone(x))

    @torch.no_grad()
    def teacher_targets(self, logits: torch.Tensor, progress: float, center_name: str = "center") -> torch.Tensor:
        """Teacher logits -> targets: centred softmax (and a centre update) or Sinkhorn-Knopp."""
        temperature = teacher_temperature(self.hparams, progress)
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temperature)
        center = getattr(self, center_name)
        probs = centered_softmax(logits, center, temperature)
        center.copy_(updated_center(center, logits, self.center_momentum))
        return probs

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        global_views, local_views = torch.cat(views[:2]), views[2:]
        with torch.no_grad():
            teacher = self.teacher_targets(self.target_head(self.target_backbone(global_views)), progress).chunk(2)
        z_global = self.head.embed(self.backbone(global_views))
        self.last_embeddings = z_global.chunk(2)  # Rescue's top-k reads the two global views
        student = list(self.head.last_layer(z_global).chunk(2))
        if local_views:
            student += self.head(self.backbone(torch.cat(local_views))).chunk(len(local_views))
        loss = dino_loss(list(teacher), student, self.student_temp)
        return loss, {"loss": loss.detach()}

    def frozen_parameters(self, progress: float) -> list[nn.Parameter]:
        """The prototypes stay fixed for the first ``freeze_last_layer_epochs`` (DINO's stabiliser)."""
        if progress * float(self.hparams["epochs"]) < float(self.hparams.get("freeze_last_layer_epochs", 0)):
            return list(self.head.last_layer.parameters())
        return []

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        tau = cosine_momentum(self.momentum_base, progress)
        ema_update(self.backbone, self.target_backbone, tau)
        ema_update(self.head, self.target_head, tau)


class DINOv2(DINO):
    """DINO plus iBOT and KoLeo, on a ViT. Extra hyperparameters: ``ibot_weight``, ``koleo_weight``,
    ``mask_probability``, ``mask_ratio_min``, ``mask_ratio_max``; the iBOT head is the DINO head
    (DINOv2's default ``separate_head: false``)."""

    name = "dinov2"

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any]) -> None:
        if not hasattr(backbone, "patch_embed"):
            raise TypeError(f"DINOv2 masks patch tokens and needs a ViT backbone, not {type(backbone).__name__}")
        super().__init__(backbone, hparams)
        self.mask_token = nn.Parameter(torch.zeros(1, backbone.embed_dim))
        self.register_buffer("patch_center", torch.zeros(1, int(hparams["head_out_dim"])))
        self.ibot_weight = float(hparams["ibot_weight"])
        self.koleo_weight = float(hparams["koleo_weight"])

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        patch = self.backbone.patch_embed.patch_size
        return images.shape[-2] // patch[0], images.shape[-1] // patch[1]

    def forward(self, views: list[torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        global_views, local_views = torch.cat(views[:2]), views[2:]
        hp = self.hparams
        # Masks are drawn on the host and indexed there, so selecting the masked patches on the
        # device needs no device-to-host sync (DINOv2 does the same in its data collate).
        masks_cpu = block_masks(
            global_views.shape[0],
            self._grid(global_views),
            (float(hp["mask_ratio_min"]), float(hp["mask_ratio_max"])),
            float(hp["mask_probability"]),
            torch.device("cpu"),
        )
        masked_index = _to_device(masks_cpu.flatten().nonzero().squeeze(1), global_views.device)
        masks = _to_device(masks_cpu, global_views.device)
        with torch.no_grad():
            t_cls, t_patches = vit_tokens(self.target_backbone, global_views)
            teacher_cls = self.teacher_targets(self.target_head(t_cls), progress).chunk(2)
            teacher_patch_logits = self.target_head(_select(t_patches, masked_index))
            if self.centering == "sinkhorn_knopp":
                masked_total = torch.tensor(float(masked_index.numel()), device=global_views.device)
                if world_size() > 1:
                    torch.distributed.all_reduce(masked_total)
                temperature = teacher_temperature(hp, progress)
                teacher_patches = sinkhorn_knopp(teacher_patch_logits, temperature, num_samples=masked_total)
            else:
                teacher_patches = self.teacher_targets(teacher_patch_logits, progress, "patch_center")
        s_cls, s_patches = vit_tokens(self.backbone, global_views, masks, self.mask_token)
        z_global = self.head.embed(s_cls)
        self.last_embeddings = z_global.chunk(2)
        student = list(self.head.last_layer(z_global).chunk(2))
        if local_views:
            student += self.head(self.backbone(torch.cat(local_views))).chunk(len(local_views))
        loss_dino = dino_loss(list(teacher_cls), student, self.student_temp)
        loss_ibot = ibot_patch_loss(
            teacher_patches, self.head(_select(s_patches, masked_index)), masks, self.student_temp, masked_index
        )
        loss_koleo = sum(koleo_loss(c) for c in s_cls.chunk(2))
        loss = loss_dino + self.ibot_weight * loss_ibot + self.koleo_weight * loss_koleo
        logs = {"loss": loss.detach(), "loss_dino": loss_dino.detach(), "loss_ibot": loss_ibot.detach()}
        return loss, {**logs, "loss_koleo": loss_koleo.detach()}

"""DINO and DINOv2: losses against lightly's, Sinkhorn-Knopp, masks, multi-crop, the methods train."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss

from sslaug.augment.views import normalize_uint8
from sslaug.engine.pretrain import build_view_maker
from sslaug.engine.pretrain import main as pretrain_main
from sslaug.engine.trainer import TrainConfig, cosine_value
from sslaug.methods import build_method
from sslaug.methods.dino import block_masks, teacher_temperature
from sslaug.methods.losses import (
    centered_softmax,
    dino_loss,
    ibot_patch_loss,
    koleo_loss,
    sinkhorn_knopp,
    updated_center,
)
from sslaug.models.backbones import build_backbone, load_encoder, vit_tokens
from sslaug.plan import PretrainRun, run_spec

MINI = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())


def test_dino_loss_and_centre_equal_lightly() -> None:
    torch.manual_seed(0)
    k, b, temp = 32, 6, 0.04
    teacher = [torch.randn(b, k) for _ in range(2)]
    student = [torch.randn(b, k) for _ in range(5)]  # 2 global + 3 local views
    reference = DINOLoss(output_dim=k, teacher_temp=temp, student_temp=0.1, center_momentum=0.9)
    expected = reference(teacher, student, teacher_temp=temp)
    center = torch.zeros(1, k)
    probs = [centered_softmax(t, center, temp) for t in teacher]
    assert torch.allclose(dino_loss(probs, student, 0.1), expected, atol=1e-5)
    # The centre: EMA of the teacher's batch mean over both global views.
    assert torch.allclose(updated_center(center, torch.cat(teacher), 0.9), reference.center.view(1, k), atol=1e-6)


def test_dino_loss_skips_the_same_view_and_needs_two_views() -> None:
    probs = F.one_hot(torch.tensor([0, 1]), 4).float()
    # The student matches the teacher's *other* view exactly: only cross-view terms count.
    student = [torch.full((2, 4), -1e4).scatter(1, torch.tensor([[1], [0]]), 0.0)]
    student.append(torch.full((2, 4), -1e4).scatter(1, torch.tensor([[0], [1]]), 0.0))
    other = F.one_hot(torch.tensor([1, 0]), 4).float()
    assert dino_loss([probs, other], student, 1.0).item() < 1e-3
    with pytest.raises(ValueError, match="two views"):
        dino_loss([probs], [student[0]], 1.0)


def test_ibot_and_koleo_equal_lightly() -> None:
    torch.manual_seed(1)
    b, h, w, k, temp = 3, 4, 4, 16, 0.07
    masks = torch.rand(b, h, w) < 0.4
    masks[0] = False  # an unmasked image counts as zero in the mean over images
    n = int(masks.sum())
    teacher, student = torch.randn(n, k), torch.randn(n, k)
    expected = IBOTPatchLoss(output_dim=k, teacher_temp=temp, student_temp=0.1)(teacher, student, masks)
    ours = ibot_patch_loss(F.softmax(teacher / temp, dim=-1), student, masks.flatten(1), 0.1)
    assert torch.allclose(ours, expected, atol=1e-5)
    flat = masks.flatten(1)
    index = flat.flatten().nonzero().squeeze(1)  # what the method passes to avoid a device sync
    assert torch.allclose(ibot_patch_loss(F.softmax(teacher / temp, dim=-1), student, flat, 0.1, index), expected, atol=1e-5)
    x = torch.randn(10, 8)
    assert torch.allclose(koleo_loss(x), KoLeoLoss()(x), atol=1e-5)


def _sinkhorn_reference(logits: np.ndarray, temp: float, iterations: int = 3) -> np.ndarray:
    """DINOv2's sinkhorn_knopp_teacher, one process, in float64 numpy."""
    q = np.exp(logits / temp).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_knopp_matches_dinov2_and_balances_prototypes() -> None:
    torch.manual_seed(2)
    logits = torch.randn(64, 8) * 0.3
    ours = sinkhorn_knopp(logits, 0.07)
    assert np.allclose(ours.numpy(), _sinkhorn_reference(logits.double().numpy(), 0.07), atol=1e-5)
    assert torch.allclose(ours.sum(dim=1), torch.ones(64), atol=1e-5)  # each sample: a distribution
    # Prototypes get equal mass: converged with many iterations, closer than softmax after 3.
    balanced = sinkhorn_knopp(logits, 0.07, iterations=100).mean(dim=0)
    assert (balanced - 1 / 8).abs().max() < 1e-3
    spread = (ours.mean(dim=0) - 1 / 8).abs().max()
    assert spread < (F.softmax(logits / 0.07, dim=-1).mean(dim=0) - 1 / 8).abs().max()
    # A common offset cancels: logits past exp's float32 range (t / T > 88) give the same targets.
    assert torch.allclose(sinkhorn_knopp(logits + 10.0, 0.07), ours, atol=1e-5)


def test_teacher_temperature_warms_up_linearly() -> None:
    hp = {"teacher_temp": 0.07, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 30, "epochs": 100}
    assert teacher_temperature(hp, 0.0) == pytest.approx(0.04)
    assert teacher_temperature(hp, 0.15) == pytest.approx(0.055)
    assert teacher_temperature(hp, 0.5) == pytest.approx(0.07)


def test_block_masks_share_and_ratios() -> None:
    torch.manual_seed(3)
    masks = block_masks(40, (14, 14), (0.1, 0.5), 0.5, torch.device("cpu"))
    counts = masks.sum(dim=1)
    masked = counts[counts > 0]
    assert masks.shape == (40, 196) and len(masked) == 20
    assert masked.min() >= int(0.1 * 196) and masked.max() <= int(0.5 * 196)
    # The ratios are spread over the range, as DINOv2's collate spreads them.
    assert masked.float().std() > 10


def test_vit_tokens_equal_timm_forward_features_and_mask_replaces_patches() -> None:
    torch.manual_seed(4)
    vit = build_backbone("vit_mini", image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    cls, patches = vit_tokens(vit, x)
    tokens = vit.forward_features(x)
    assert torch.allclose(cls, tokens[:, 0]) and torch.allclose(patches, tokens[:, 1:])
    assert torch.allclose(cls, vit(x), atol=1e-6)  # the pooled feature the evaluations read
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[0, :10] = True
    masked_cls, _ = vit_tokens(vit, x, masks, torch.zeros(1, 64))
    assert torch.allclose(masked_cls[1], cls[1], atol=1e-6) and not torch.allclose(masked_cls[0], cls[0])


def test_sqrt_lr_scaling_and_weight_decay_schedule() -> None:
    config = TrainConfig(epochs=1, batch_size=2048, base_lr=0.004, lr_scaling="sqrt")
    assert config.lr == pytest.approx(0.004 * math.sqrt(2))  # Rescue's DINOv2: "square rooted scale"
    assert cosine_value(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine_value(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine_value(100, 100, 0.04, 0.4) == pytest.approx(0.4)


def _spec(method: str, augmentation: str = "standard", options: tuple = (), **train) -> dict:
    backbone = "vit_mini" if method == "dinov2" else "tiny"
    spec = run_spec(PretrainRun(method, augmentation, options, backbone, "mini", 6, 0), "mini", MINI)
    spec["train"] = {**spec["train"], "batch_size": 32, "log_every_steps": 1, "warmup_epochs": 0, **train}
    return spec


def test_multicrop_views_and_rescue_order() -> None:
    spec = _spec("dinov2", "rescue", (("k", 16), ("s", 1.0)))
    maker = build_view_maker(spec, 10, None, None, torch.device("cpu"))
    views = maker(torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.arange(4), 0)
    # [global 1, global 2, Rescue's strong view, local 1, local 2]
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 3 + [(16, 16)] * 2
    spec = _spec("dinov2")
    views = build_view_maker(spec, 10, None, None, torch.device("cpu"))(
        torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.arange(4), 0
    )
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 2 + [(16, 16)] * 2


def test_rescue_on_dinov2_adds_the_top_k_term() -> None:
    torch.manual_seed(5)
    spec = _spec("dinov2", "rescue", (("k", 16), ("s", 1.0)))
    hparams = {**spec["hparams"], "epochs": 6}
    method = build_method(
        "dinov2", build_backbone("vit_mini", 32), hparams, "rescue", {**spec["strong"], "k": 16, "s": 1.0}
    )
    views = [torch.randn(8, 3, 32, 32) for _ in range(3)] + [torch.randn(8, 3, 16, 16) for _ in range(2)]
    loss, logs = method(views, 0.5)
    assert torch.allclose(loss, logs["loss_ssl"] + logs["loss_topk"])
    assert -1.0 <= logs["loss_topk"].item() <= 1.0
    loss.backward()
    assert method.base.mask_token.grad is not None


def test_prototypes_stay_frozen_for_the_first_epoch() -> None:
    spec = _spec("dino")
    hparams = {**spec["hparams"], "epochs": 4, "freeze_last_layer_epochs": 1}
    method = build_method("dino", build_backbone("tiny"), hparams)
    assert method.frozen_parameters(0.2) == list(method.head.last_layer.parameters())
    assert method.frozen_parameters(0.25) == []


@pytest.mark.parametrize("method", ["dino", "dinov2"])
def test_dino_methods_train_without_collapse(method: str, small_mini: Path, tmp_path: Path) -> None:
    """A short run: finite losses, an encoder the evaluations can rebuild, and features that did not
    collapse to one point. (DINO's loss first rises while its centre catches up with the teacher,
    so a falling loss is not the check here.)"""
    spec = _spec(method)
    run_dir = tmp_path / method
    args = ["--spec", json.dumps(spec), "--data", str(small_mini), "--run-dir", str(run_dir)]
    assert pretrain_main([*args, "--out", str(run_dir / "encoder.pt")]) == 0
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert len(losses) > 20 and all(math.isfinite(v) for v in losses)
    encoder, meta = load_encoder(run_dir / "encoder.pt")  # evaluations rebuild the same backbone
    assert meta["backbone"] == spec["backbone"]
    images = normalize_uint8(torch.from_numpy(np.load(small_mini / "train_images.npy")[:64]).permute(0, 3, 1, 2))
    with torch.no_grad():
        features = F.normalize(encoder(images), dim=1)
    similarity = features @ features.T
    off_diagonal = similarity[~torch.eye(len(features), dtype=torch.bool)]
    assert off_diagonal.mean() < 0.95, f"{method}: features collapsed (mean cosine {off_diagonal.mean():.3f})"


def test_layer_wise_lr_decay_groups() -> None:
    """DINOv2's optimiser groups: block i of L at 0.9^(L - i), the patch embedding at 0.9^(L + 1) x 0.2."""
    from sslaug.engine.trainer import _param_groups
    from sslaug.models.backbones import vit_lr_scales

    spec = _spec("dinov2")
    method = build_method("dinov2", build_backbone("vit_mini", 32), {**spec["hparams"], "epochs": 6})
    groups = _param_groups(method, 0.04, True, None, vit_lr_scales(method.backbone, 0.9, 0.2))
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depth = len(method.backbone.blocks)
    assert scale_of[id(method.backbone.blocks[0].attn.qkv.weight)] == pytest.approx(0.9**depth)
    assert scale_of[id(method.backbone.blocks[-1].mlp.fc1.weight)] == pytest.approx(0.9)
    assert scale_of[id(method.backbone.patch_embed.proj.weight)] == pytest.approx(0.9 ** (depth + 1) * 0.2)
    assert scale_of[id(method.backbone.norm.weight)] == 1.0 and scale_of[id(method.head.mlp[0].weight)] == 1.0
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim <= 1 for p in g["params"]))

"""Detection transfer of ViT encoders: ViTDet's simple feature pyramid under torchvision's R-CNNs.

Tiny random-weight timm ViTs (2-4 blocks, width 32-64) on 64 px images, so every test
runs in seconds on CPU; the end-to-end tests go through the real CLI on the mini COCO
set made by the real preparation entry point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sslaug.evaluate import detection
from sslaug.evaluate.detection import (
    DetectionConfig,
    DetectionTargets,
    build_backbone_fpn,
    build_detector,
    build_optimizer,
    train_detector,
)
from sslaug.evaluate.vitdet import ViTSimpleFeaturePyramid
from sslaug.models.backbones import build_backbone, encoder_state

#: The small ViT of the task brief: patch 8 on 64 px images, 2 blocks of width 32.
VIT_KWARGS: dict[str, Any] = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}

# Mini-scale detection settings (as tests/test_evaluate_transfer.py): 64 px, narrow heads, no workers.
DET_SPEC: dict[str, Any] = {
    "iterations": 4,
    "batch_size": 2,
    "lr": 0.01,
    "warmup_iters": 2,
    "min_size_train": [64],
    "max_size_train": 64,
    "min_size_test": 64,
    "max_size_test": 64,
    "fpn_channels": 32,
    "box_head_dim": 64,
    "roi_batch_size_per_image": 64,
    "mask_head_channels": 32,
    "num_workers": 0,
    "eval_batch_size": 4,
}


def _vit(**overrides: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("vit_small", image_size=64, **{**VIT_KWARGS, **overrides})


@pytest.fixture(scope="module")
def vit_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small ViT saved as pretraining saves encoders (architecture in spec.backbone_kwargs)."""
    path = tmp_path_factory.mktemp("vit") / "encoder.pt"
    torch.save(encoder_state(_vit(), "vit_small", 64, {"backbone_kwargs": VIT_KWARGS}), path)
    return path


@pytest.fixture(scope="module")
def mini_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated mini COCO set (shapes, polygons), through the real preparation CLI."""
    from sslaug.data.prepare import main as prepare

    out = tmp_path_factory.mktemp("data") / "mini_coco"
    rc = prepare(
        [
            "--dataset",
            "mini_coco",
            "--source",
            "generate",
            "--option",
            "n_train=8",
            "--option",
            "n_val=4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


# --------------------------------------------------------------------------- the pyramid


@pytest.mark.parametrize("patch", [4, 8, 16])
def test_pyramid_strides_and_shapes(patch: int) -> None:
    vit = _vit(patch_size=patch, depth=1)
    pyramid = ViTSimpleFeaturePyramid(vit, out_channels=16)
    assert pyramid.encoder is vit  # the pretrained module itself is fine-tuned, not a copy
    strides = [patch // 4, patch // 2, patch, 2 * patch, 4 * patch]
    assert pyramid.strides == strides and pyramid.size_divisible == 4 * patch
    h, w = 64, 128  # multiples of 4p for every patch size here
    maps = pyramid(torch.randn(2, 3, h, w))
    assert list(maps) == ["0", "1", "2", "3", "pool"]
    assert [tuple(m.shape) for m in maps.values()] == [(2, 16, h // s, w // s) for s in strides]
    assert all(m.dtype == torch.float32 for m in maps.values())


def test_patch_map_matches_timm_intermediates() -> None:
    """Prefix tokens (class + 2 registers) dropped and tokens laid out row-major, as timm's own NCHW path."""
    vit = _vit(reg_tokens=2).eval()
    assert vit.num_prefix_tokens == 3
    pyramid = ViTSimpleFeaturePyramid(vit, out_channels=8)
    x = torch.randn(2, 3, 48, 80)  # non-square, not the 64 px the position embedding was built for
    with torch.no_grad():
        ours = pyramid.patch_map(x)
        (reference,) = vit.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    assert ours.shape == (2, 32, 6, 10)
    torch.testing.assert_close(ours, reference)


def test_mini_vit_pyramid_on_mini_images() -> None:
    """The mini scale's patch-4 ViT (32 px pretraining) on 64 px detection images: 64..4 px maps."""
    vit = build_backbone("vit_mini", image_size=32)
    maps = build_backbone_fpn(vit, DetectionConfig(fpn_channels=8))(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps.values()] == [64, 32, 16, 8, 4]


@pytest.mark.parametrize("patch", [2, 6, 12])
def test_patch_sizes_the_pyramid_cannot_use_are_named(patch: int) -> None:
    with pytest.raises(ValueError, match=f"patch size {patch}"):
        ViTSimpleFeaturePyramid(_vit(patch_size=patch, depth=1), out_channels=8)


def test_backbone_builder_dispatches_on_encoder_type() -> None:
    cfg = DetectionConfig(fpn_channels=8)
    assert isinstance(build_backbone_fpn(_vit(), cfg), ViTSimpleFeaturePyramid)
    resnet = build_backbone_fpn(build_backbone("tiny"), cfg)
    assert isinstance(resnet, detection.FPNBackbone) and resnet.size_divisible == 32
    with pytest.raises(TypeError, match="ViTSimpleFeaturePyramid"):
        detection.StageFeatures(_vit())


def test_detector_pads_to_the_pyramid_multiple() -> None:
    """A patch-16 ViT needs 64 px multiples: a 40 x 72 image is padded to 64 x 128 and every level is exact."""
    vit = _vit(patch_size=16, depth=1)
    cfg = DetectionConfig(
        fpn_channels=8, box_head_dim=16, min_size_train=(40,), max_size_train=200, min_size_test=40, max_size_test=200
    )
    detector = build_detector(vit, cfg, num_classes=3).eval()
    assert detector.transform.size_divisible == 64
    images, _ = detector.transform([torch.rand(3, 40, 72)])
    assert images.tensors.shape[-2:] == (64, 128)
    maps = detector.backbone(images.tensors)
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]
    with torch.no_grad():
        (out,) = detector([torch.rand(3, 40, 72)])
    assert out["boxes"].shape[1] == 4


# --------------------------------------------------------------------------- freezing and lr decay


def _encoder_param(pyramid: ViTSimpleFeaturePyramid, name: str) -> nn.Parameter:
    return dict(pyramid.encoder.named_parameters())[name]


@pytest.mark.parametrize(("freeze_at", "frozen_blocks"), [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 4)])
def test_freeze_at_for_vit(freeze_at: int, frozen_blocks: int) -> None:
    """Depth 4: 1 = embeddings, k = 2..4 adds (k-1)*depth//4 blocks, 5 = the whole encoder."""
    pyramid = build_backbone_fpn(_vit(depth=4), DetectionConfig(fpn_channels=8, freeze_at=freeze_at))
    assert _encoder_param(pyramid, "pos_embed").requires_grad == (freeze_at == 0)
    assert _encoder_param(pyramid, "patch_embed.proj.weight").requires_grad == (freeze_at == 0)
    assert _encoder_param(pyramid, "cls_token").requires_grad == (freeze_at == 0)
    trainable = [all(p.requires_grad for p in block.parameters()) for block in pyramid.encoder.blocks]
    assert trainable == [i >= frozen_blocks for i in range(4)]
    assert _encoder_param(pyramid, "norm.weight").requires_grad == (freeze_at < 5)
    assert all(p.requires_grad for p in pyramid.levels.parameters())


def test_layer_decay_scales_lr_per_block() -> None:
    cfg = DetectionConfig(fpn_channels=8, box_head_dim=16, layer_decay=0.5, lr=0.1)
    detector = build_detector(_vit(depth=2), cfg, num_classes=3)
    optimizer = build_optimizer(detector, cfg)
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    vit = detector.backbone.encoder
    assert scale_of[id(vit.patch_embed.proj.weight)] == 0.5**3
    assert scale_of[id(vit.pos_embed)] == 0.5**3
    assert scale_of[id(vit.blocks[0].attn.qkv.weight)] == 0.5**2
    assert scale_of[id(vit.blocks[1].mlp.fc1.weight)] == 0.5
    assert scale_of[id(vit.norm.weight)] == 1.0
    assert scale_of[id(detector.backbone.levels[0][0].weight)] == 1.0
    assert scale_of[id(detector.roi_heads.box_predictor.cls_score.weight)] == 1.0
    # Norm layers (the ViT's and the pyramid's LayerNorms) keep no weight decay under every scale.
    for group in optimizer.param_groups:
        if any(p is vit.norm.weight or p is vit.blocks[0].norm1.weight for p in group["params"]):
            assert group["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        1 for p in detector.parameters() if p.requires_grad
    )


def test_training_updates_trainable_vit_blocks_only(mini_coco: Path) -> None:
    """Two real SGD steps with freeze_at=2 on a depth-4 ViT: block 0 and embeddings stay, the rest move."""
    from sslaug.data.formats import open_coco

    cfg = detection.apply_overrides(
        DetectionConfig, {**DET_SPEC, "iterations": 2, "freeze_at": 2, "lr": 0.05, "warmup_iters": 0}
    )
    detector = build_detector(_vit(depth=4), cfg, num_classes=4)
    vit = detector.backbone.encoder
    before = {n: p.detach().clone() for n, p in vit.named_parameters()}
    base, ann = open_coco(mini_coco, "train")
    loss = train_detector(
        detector,
        DetectionTargets(base, detection._annotation_coco(ann), "faster_rcnn", 0.5),
        cfg,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(torch.tensor(loss))
    changed = {n for n, p in vit.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith(("patch_embed", "pos_embed", "cls_token", "blocks.0.")) for n in changed)
    assert any(n.startswith("blocks.3.") for n in changed) and "norm.weight" in changed


# --------------------------------------------------------------------------- the real CLI, end to end


@pytest.mark.parametrize(
    ("arch", "extra"),
    [("faster_rcnn", {}), ("mask_rcnn", {"optimizer": "adamw", "lr": 1e-3, "layer_decay": 0.7, "freeze_at": 1})],
)
def test_vit_detection_cli_reports_coco_metrics(
    arch: str, extra: dict[str, Any], vit_encoder_path: Path, mini_coco: Path, tmp_path: Path
) -> None:
    out = tmp_path / "metrics.json"
    # score_thresh 0: the barely trained detector must still output detections to evaluate.
    spec = {**DET_SPEC, "arch": arch, "score_thresh": 0.0, **extra}
    rc = detection.main(
        [
            "--encoder",
            str(vit_encoder_path),
            "--data",
            str(mini_coco),
            "--train-split",
            "train",
            "--test-split",
            "val",
            "--spec",
            json.dumps(spec),
            "--seed",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["protocol"] == "detection"
    expected = {"ap", "ap50", "ap75", "aps", "apm", "apl"}
    if arch == "mask_rcnn":
        expected |= {"ap_mask", "ap50_mask", "ap75_mask"}
    assert set(result["metrics"]) == expected
    assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in result["metrics"].values())
    assert result["info"]["backbone"] == "vit_small" and result["info"]["num_detections"] > 0
    assert result["info"]["num_classes"] == 4  # mini COCO's circle/square/triangle + background
    assert result["config"]["arch"] == arch
    assert not any("layer_decay" in n for n in result["notes"])


def test_layer_decay_on_a_convnet_is_noted(mini_coco: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(encoder_state(build_backbone("tiny"), "tiny", 32, {}), path)
    spec = {**DET_SPEC, "iterations": 1, "layer_decay": 0.7}
    result = detection.run_detection(path, mini_coco, "train", "val", spec, 0, tmp_path / "m.json")
    assert any("layer_decay 0.7 applies to ViT encoders only" in n for n in result["notes"])


@pytest.mark.parametrize(("key", "value"), [("layer_decay", 0.0), ("layer_decay", 1.5), ("optimizer", "lamb")])
def test_bad_vit_options_are_named(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=key):
        detection.apply_overrides(DetectionConfig, {key: value})

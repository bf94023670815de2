"""Detection transfer: fine-tune a pretrained encoder inside a torchvision R-CNN + FPN.

Protocol of the papers' detection tables (MSR, papers/003_f8ecd9afc2df6903.txt,
Tables 5-6 and its supplementary: "Mask R-CNN with FPN ... fine-tune ... on COCO
train2017 with 1x schedule and 2x schedule, and evaluate on val2017", keypoint
Mask R-CNN for keypoints; CLSA, papers/004_fbcf473626e2cd99.txt, Table 3 follows
MoCo (He et al. 2020); Rescuing Easy Samples, papers/001_9a6f22326c4191c2.txt,
Table 2). Those papers run Detectron2; this module rebuilds the same set-up with
torchvision so the pipeline has one dependency stack:

* ``faster_rcnn`` / ``mask_rcnn`` / ``keypoint_rcnn`` heads over an FPN
  (P2-P5 from the four backbone stages + P6 by max-pooling, as Detectron2's
  R50-FPN), on top of the *whole* pretrained encoder, all layers fine-tuned.
* Schedules as Detectron2: ``1x`` = 90k iterations, ``2x`` = 180k, batch 16,
  base lr 0.02, lr x0.1 at 2/3 and 8/9 of training, linear warm-up of 1000
  iterations from 0.001x, SGD momentum 0.9, weight decay 1e-4 (0 on norm layers),
  multi-scale training (short side 640-800, long side <= 1333), horizontal flip,
  test short side 800. Iterations and lr are plain config values so the mini
  scale can run a few iterations.
* Normalisation (``norm``): ``syncbn`` (default) follows MoCo's detection protocol
  (He et al. 2020, Sec. 4.2): batch norm is *trained* (synchronised across GPUs)
  instead of frozen, and the new FPN layers get batch norm too, because
  self-supervised features have different statistics from supervised ones. In a
  single process SyncBN is plain BN; under ``torch.distributed`` the layers are
  converted to ``SyncBatchNorm``. ``frozen`` is Detectron2's supervised default
  (FrozenBatchNorm2d, no FPN norm), kept for comparison.
* ViT encoders (Rescuing Easy Samples' MoCo v3 ViT-B and DINOv2 ViT-L) get ViTDet's
  simple feature pyramid instead of stages + FPN (``sslaug.evaluate.vitdet``: strides,
  padding, ``freeze_at`` and layer-wise lr decay are documented there); ``build_backbone_fpn``
  picks the pyramid by encoder type. A ViT has LayerNorm only, so ``norm`` does not
  change it; its pyramid uses LayerNorm as ViTDet does.

Evaluation: pycocotools ``COCOeval`` on the test split's annotation JSON: box AP,
AP50, AP75, APs, APm, APl (percent) and, for Mask R-CNN, mask AP/AP50/AP75
(``ap_mask`` ...), for Keypoint R-CNN keypoint AP/AP50/AP75 (``ap_kp`` ...).
VOC is read after conversion to the same COCO format.

Entry point::

    python -m sslaug.evaluate.detection --encoder ENC.pt --data DIR --train-split train \
        --test-split val --spec '{"iterations": 20}' --seed 0 --out metrics.json
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from sslaug.augment.views import IMAGENET_MEAN, IMAGENET_STD
from sslaug.data.formats import open_coco, read_meta
from sslaug.evaluate.common import (
    autocast,
    check_encoder_path,
    cli_main,
    infinite_batches,
    pick_device,
    seed_everything,
    write_result,
)
from sslaug.evaluate.vitdet import ViTSimpleFeaturePyramid, is_vit
from sslaug.models.backbones import TinyConvNet, load_encoder
from sslaug.settings import apply_overrides

#: Detectron2 schedules at batch 16: name -> (iterations, lr-step fractions of training).
#: ``voc24k`` is Detectron2's PASCAL VOC schedule (24k iterations, steps at 18k and 22k).
SCHEDULES: dict[str, tuple[int, tuple[float, ...]]] = {
    "1x": (90_000, (2 / 3, 8 / 9)),
    "2x": (180_000, (2 / 3, 8 / 9)),
    "voc24k": (24_000, (18 / 24, 22 / 24)),
}
ARCHS = ("faster_rcnn", "mask_rcnn", "keypoint_rcnn")
NORMS = ("syncbn", "frozen")
OPTIMIZERS = ("sgd", "adamw")
BOX_KEYS = ("ap", "ap50", "ap75", "aps", "apm", "apl")


@dataclass
class DetectionConfig:
    """Detection fine-tuning hyperparameters; defaults = Detectron2 R50-FPN (see module doc).

    Attributes:
        arch: ``faster_rcnn``, ``mask_rcnn`` or ``keypoint_rcnn``.
        schedule: ``1x`` (90k it.), ``2x`` (180k it.) or ``voc24k``; sets iterations and lr steps.
        iterations: overrides the schedule's iteration count (mini scale).
        lr_steps: lr-decay points as fractions of training; ``None`` = the schedule's.
        batch_size: images per iteration (16 in Detectron2; scale lr linearly if changed).
        lr: base learning rate (0.02 at batch 16).
        momentum / weight_decay: SGD settings (0.9 / 1e-4; norm layers get no decay).
        gamma: lr factor at each step (0.1).
        warmup_iters / warmup_factor: linear warm-up from ``warmup_factor * lr`` (1000 / 0.001).
        norm: ``syncbn`` (MoCo's protocol, default) or ``frozen`` (Detectron2 supervised default).
        freeze_at: number of leading backbone parts frozen (0 = none, 1 = stem, 2 = stem + res2),
            Detectron2's FREEZE_AT; MoCo fine-tunes everything (0). For a ViT: 1 = patch/position
            embedding, 2..4 = + the first quarter/half/three quarters of the blocks, 5 = all.
        optimizer: ``sgd`` (Detectron2's R-CNN recipe, default for every encoder so a table's
            rows share one protocol; the Rescue paper does not state its detector) or ``adamw``
            (betas 0.9/0.999, ViTDet's optimizer; set lr ~1e-4 and weight_decay 0.1 with it).
        layer_decay: layer-wise lr decay for ViT encoders (block i of L gets ``decay**(L - i)``
            of the lr; ViTDet uses 0.7 for ViT-B, 0.8 for ViT-L). 1.0 = off (default, the
            Detectron2 recipe); ignored, with a note in the result, for non-ViT encoders.
        fpn_channels: FPN width (256).
        box_head_dim: width of the 2-fc box head (1024, Detectron2's FPN "2fc" head).
        roi_batch_size_per_image: sampled RoIs per image for the box loss (512).
        mask_head_channels: width of Mask R-CNN's 4 mask-head convs (256, Detectron2).
        keypoint_head_channels: width of Keypoint R-CNN's 8 head convs (512, Detectron2);
            the mini scale narrows the heads, which dominate CPU time.
        min_size_train: short-side sizes drawn per image in training (640..800).
        max_size_train / min_size_test / max_size_test: resize limits (1333 / 800 / 1333).
        flip_p: horizontal flip probability in training (0.5).
        score_thresh / detections_per_img: test-time box filtering (0.05 / 100).
        amp: bf16 autocast of backbone + FPN on CUDA (heads stay float32); ignored on CPU.
        num_workers: DataLoader worker processes.
        eval_batch_size: images per test forward pass.
    """

    arch: str = "faster_rcnn"
    schedule: str = "1x"
    iterations: int | None = None
    lr_steps: tuple[float, ...] | None = None
    batch_size: int = 16
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    norm: str = "syncbn"
    freeze_at: int = 0
    optimizer: str = "sgd"
    layer_decay: float = 1.0
    fpn_channels: int = 256
    box_head_dim: int = 1024
    roi_batch_size_per_image: int = 512
    mask_head_channels: int = 256
    keypoint_head_channels: int = 512
    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    flip_p: float = 0.5
    score_thresh: float = 0.05
    detections_per_img: int = 100
    amp: bool = True
    num_workers: int = 4
    eval_batch_size: int = 8

    def validate(self) -> None:
        """Fail early, naming the field, on values that cannot work."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, not {self.arch!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {tuple(SCHEDULES)}, not {self.schedule!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {self.norm!r}")
        if self.iterations is not None and self.iterations <= 0:
            raise ValueError(f"iterations must be positive, got {self.iterations}")
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {self.freeze_at}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not self.min_size_train:
            raise ValueError("min_size_train must list at least one size")

    def total_iterations(self) -> int:
        """Training length: the explicit ``iterations`` or the schedule's."""
        return self.iterations if self.iterations is not None else SCHEDULES[self.schedule][0]

    def milestones(self) -> list[int]:
        """Iterations at which the lr is multiplied by ``gamma``."""
        fractions = self.lr_steps if self.lr_steps is not None else SCHEDULES[self.schedule][1]
        return sorted(round(f * self.total_iterations()) for f in fractions)


# --------------------------------------------------------------------------- backbone


class StageFeatures(nn.Module):
    """Pretrained encoder -> its four stage feature maps (res2..res5 for ResNets).

    ``parts`` lists the stem and the four stages in order, for ``freeze_at``.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if isinstance(encoder, TinyConvNet):
            # The tiny net has no separate stem: layer1 plays res2's role.
            self.stem: nn.Module = nn.Identity()
            stages = [encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
        elif all(hasattr(encoder, n) for n in ("conv1", "bn1", "act1", "maxpool", "layer4")):
            # timm ResNet: same stem + stages as its own forward_features (CIFAR stem included).
            self.stem = nn.Sequential(encoder.conv1, encoder.bn1, encoder.act1, encoder.maxpool)
            stages = [encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
        elif hasattr(encoder, "patch_embed"):
            raise TypeError(
                f"{type(encoder).__name__} is a ViT: it has no stage maps; its detection backbone is "
                "sslaug.evaluate.vitdet.ViTSimpleFeaturePyramid (build_backbone_fpn picks it)"
            )
        else:
            raise NotImplementedError(f"detection transfer does not know the stages of {type(encoder).__name__}")
        self.stages = nn.ModuleList(stages)

    @property
    def parts(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    @torch.no_grad()
    def channels(self) -> list[int]:
        """Channel count of each stage, from a dry run in eval mode (no BN statistics change)."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            return [int(m.shape[1]) for m in self(torch.zeros(1, 3, 64, 64, device=device))]
        finally:
            self.train(was_training)


class FPNBackbone(nn.Module):
    """Stage features + FPN (P2-P5, P6 by max-pool), the interface torchvision R-CNNs expect.

    With ``amp`` on CUDA only this part runs under bf16 autocast and returns float32
    maps: it holds nearly all the FLOPs, while the heads decode box coordinates,
    which bf16 (8-bit mantissa: ~4 px steps at 800 px) would visibly quantise.
    """

    def __init__(self, body: StageFeatures, out_channels: int, fpn_norm: bool, amp: bool = False) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.channels(), out_channels, extra_blocks=LastLevelMaxPool(),
            norm_layer=nn.BatchNorm2d if fpn_norm else None,
        )
        self.out_channels = out_channels
        # Padding multiple for the detector's transform: torchvision's (and Detectron2's R50-FPN) default.
        self.size_divisible = 32
        self.amp = amp

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        with autocast(x.device, self.amp):
            maps = self.body(x)
            features = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        return OrderedDict((k, v.float()) for k, v in features.items())


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a FrozenBatchNorm2d with the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_batchnorm(child))
    return module


def build_backbone_fpn(encoder: nn.Module, config: DetectionConfig) -> FPNBackbone | ViTSimpleFeaturePyramid:
    """The detection backbone of a pretrained encoder, by encoder type.

    A plain ViT gets ViTDet's simple feature pyramid over its last patch-token map; a
    ResNet or the tiny convnet its stages (normalisation per ``config.norm``) under an FPN.
    Both return P2-P5 + P6 maps of ``config.fpn_channels`` channels.
    """
    if is_vit(encoder):
        pyramid = ViTSimpleFeaturePyramid(encoder, config.fpn_channels, amp=config.amp)
        pyramid.freeze(config.freeze_at)
        return pyramid
    body = StageFeatures(encoder)
    if config.norm == "frozen":
        freeze_batchnorm(body)
    for part in body.parts[: config.freeze_at]:
        # Detectron2's FREEZE_AT: frozen parts also get frozen BN, else their statistics drift.
        freeze_batchnorm(part)
        for p in part.parameters():
            p.requires_grad_(False)
    return FPNBackbone(body, config.fpn_channels, fpn_norm=config.norm == "syncbn", amp=config.amp)


def build_detector(encoder: nn.Module, config: DetectionConfig, num_classes: int,
                   num_keypoints: int = 17) -> nn.Module:
    """A torchvision Faster / Mask / Keypoint R-CNN over the pretrained encoder + FPN.

    ``num_classes`` includes the background (max COCO category id + 1).
    """
    backbone = build_backbone_fpn(encoder, config)
    common: dict[str, Any] = dict(
        # Pad each batch to the multiple the backbone needs (ViT: patch grid and exact pyramid strides).
        size_divisible=backbone.size_divisible,
        min_size=tuple(config.min_size_train), max_size=config.max_size_train,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        # Detectron2 R50-FPN keeps 1000 proposals per image after NMS in training and test.
        rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=1000,
        box_score_thresh=config.score_thresh, box_detections_per_img=config.detections_per_img,
        box_batch_size_per_image=config.roi_batch_size_per_image,
    )
    if config.arch == "faster_rcnn":
        model: nn.Module = FasterRCNN(backbone, num_classes=num_classes, **common)
    elif config.arch == "mask_rcnn":
        model = MaskRCNN(backbone, num_classes=num_classes, **common)
        # Rebuilt at the configured width (torchvision's constructor fixes it at 256).
        width = config.mask_head_channels
        model.roi_heads.mask_head = MaskRCNNHeads(backbone.out_channels, (width,) * 4, dilation=1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(width, width, num_classes)
    else:
        model = KeypointRCNN(backbone, num_classes=2, num_keypoints=num_keypoints, **common)
        width = config.keypoint_head_channels
        model.roi_heads.keypoint_head = KeypointRCNNHeads(backbone.out_channels, (width,) * 8)
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(width, num_keypoints)
    # The box head too is rebuilt at the configured width (torchvision fixes 1024).
    box_classes = 2 if config.arch == "keypoint_rcnn" else num_classes
    resolution = model.roi_heads.box_roi_pool.output_size[0]
    model.roi_heads.box_head = TwoMLPHead(backbone.out_channels * resolution**2, config.box_head_dim)
    model.roi_heads.box_predictor = FastRCNNPredictor(config.box_head_dim, box_classes)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and config.norm == "syncbn":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# --------------------------------------------------------------------------- data


def keypoint_ann_path(data: Path, split: str) -> Path:
    """COCO's person-keypoints annotation file of a split, next to ``instances_{split}.json``."""
    return data / "annotations" / f"person_keypoints_{split}.json"


def _flip_map(keypoint_names: Sequence[str]) -> list[int]:
    """Index permutation swapping left_* and right_* keypoints under a horizontal flip."""
    index = {n: i for i, n in enumerate(keypoint_names)}
    out = []
    for name in keypoint_names:
        if name.startswith("left_"):
            other = "right_" + name[5:]
        elif name.startswith("right_"):
            other = "left_" + name[6:]
        else:
            other = name
        out.append(index.get(other, index[name]))
    return out


class DetectionTargets(Dataset):
    """Wraps the COCO-format dataset: sanitised targets, + masks / keypoints, + training flip.

    Boxes and labels come from the project's loader (``open_coco``). Masks are added
    by matching each target box to its annotation in the JSON (so the two can never
    disagree on order or filtering); keypoint targets are read from the split's
    ``person_keypoints`` JSON (person boxes only, as Keypoint R-CNN predicts).
    """

    def __init__(self, base: Dataset, coco: COCO | None, arch: str, flip_p: float) -> None:
        self.base = base
        self.coco = coco
        self.arch = arch
        self.flip_p = flip_p
        self.flip_index: list[int] | None = None
        if arch == "keypoint_rcnn" and coco is not None:
            person = next(c for c in coco.loadCats(coco.getCatIds()) if c.get("keypoints"))
            self.flip_index = _flip_map(person["keypoints"])

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.base[index]
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if self.arch == "keypoint_rcnn":
            target = self._keypoint_target(int(target["image_id"]))
        else:
            target = {"boxes": target["boxes"].float().reshape(-1, 4),
                      "labels": target["labels"].long(), "image_id": int(target["image_id"])}
            if self.arch == "mask_rcnn":
                target["masks"] = self._masks(target, image.shape[-2:])
        target = _drop_degenerate(target)
        if self.flip_p > 0 and torch.rand(()) < self.flip_p:
            image, target = self._flip(image, target)
        return image, target

    def _masks(self, target: dict[str, Any], size: torch.Size) -> torch.Tensor:
        """Instance masks (uint8 N x H x W) of the target boxes, looked up by box in the JSON."""
        assert self.coco is not None
        h, w = int(size[0]), int(size[1])
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=target["image_id"]))
        if len(target["boxes"]) == 0:
            return torch.zeros(0, h, w, dtype=torch.uint8)
        ann_boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = []
        for box, label in zip(target["boxes"], target["labels"]):
            # The loader clips boxes to the image, so compare after the same clipping.
            clipped = ann_boxes.clone()
            clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
            clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
            dist = (clipped - box).abs().amax(dim=1)
            dist[torch.tensor([a["category_id"] != int(label) for a in anns], dtype=torch.bool)] = float("inf")
            j = int(dist.argmin()) if len(anns) else -1
            if j < 0 or float(dist[j]) > 1.0:
                raise ValueError(f"image {target['image_id']}: no annotation matches box {box.tolist()}")
            mask = self.coco.annToMask(anns[j])
            if mask.shape != (h, w):
                raise ValueError(f"image {target['image_id']}: mask {mask.shape} vs image {(h, w)}")
            masks.append(torch.from_numpy(mask))
        return torch.stack(masks).to(torch.uint8)

    def _keypoint_target(self, image_id: int) -> dict[str, Any]:
        """Person boxes + keypoints (N x K x 3) of one image from the keypoint JSON."""
        assert self.coco is not None
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))
                if a.get("num_keypoints", 0) > 0]
        k = len(self.flip_index or [])
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(anns), dtype=torch.int64),
            "keypoints": torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, k, 3),
            "image_id": image_id,
        }

    def _flip(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Horizontal flip of the image and every target field (Detectron2's RandomFlip)."""
        w = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
        target["boxes"] = boxes
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        if "keypoints" in target:
            kp = target["keypoints"].clone()
            kp[..., 0] = w - kp[..., 0]
            target["keypoints"] = kp[:, self.flip_index or list(range(kp.shape[1]))]
        return image.flip(-1), target


def _drop_degenerate(target: dict[str, Any]) -> dict[str, Any]:
    """Remove zero-width/height boxes (torchvision asserts on them) and their masks/keypoints."""
    boxes = target["boxes"]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if bool(keep.all()):
        return target
    return {k: (v[keep] if isinstance(v, torch.Tensor) and v.shape[:1] == keep.shape else v) for k, v in target.items()}


def collate_list(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection batches stay lists: images differ in size."""
    images, targets = zip(*batch)
    return list(images), list(targets)


# --------------------------------------------------------------------------- training


def param_groups(model: nn.Module, weight_decay: float, lr_scales: dict[int, float] | None = None
                 ) -> list[dict[str, Any]]:
    """Weight decay on all trainable parameters except normalisation layers (Detectron2 default).

    ``lr_scales`` (``id(parameter)`` -> lr multiplier, e.g. a ViT's layer-wise lr decay)
    splits the groups further; every group carries its ``lr_scale`` (1 by default).
    """
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                scale = (lr_scales or {}).get(id(p), 1.0)
                groups.setdefault((isinstance(module, norm_types), scale), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if is_norm else weight_decay, "lr_scale": scale}
            for (is_norm, scale), params in sorted(groups.items(), key=lambda item: item[0])]


def build_optimizer(model: nn.Module, config: DetectionConfig) -> torch.optim.Optimizer:
    """SGD (Detectron2) or AdamW (ViTDet) over ``param_groups``, with the ViT's layer-wise lr decay."""
    backbone = getattr(model, "backbone", None)
    lr_scales = backbone.lr_scales(config.layer_decay) \
        if isinstance(backbone, ViTSimpleFeaturePyramid) and config.layer_decay != 1.0 else None
    groups = param_groups(model, config.weight_decay, lr_scales)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def lr_factor(it: int, milestones: Sequence[int], gamma: float, warmup_iters: int, warmup_factor: float) -> float:
    """Detectron2's WarmupMultiStepLR multiplier at iteration ``it``."""
    factor = gamma ** sum(1 for m in milestones if it >= m)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def _to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device
               ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def train_detector(model: nn.Module, train_set: Dataset, config: DetectionConfig, device: torch.device,
                   generator: torch.Generator) -> float:
    """Run the configured number of optimizer iterations (lr per ``lr_factor`` x group scale); returns the last loss."""
    optimizer = build_optimizer(model, config)
    total, milestones = config.total_iterations(), config.milestones()
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                        drop_last=len(train_set) >= config.batch_size,  # type: ignore[arg-type]
                        generator=generator, num_workers=config.num_workers, collate_fn=collate_list,
                        pin_memory=device.type == "cuda", persistent_workers=config.num_workers > 0)
    batches = infinite_batches(loader)
    model.train()
    last = float("nan")
    for it in range(total):
        images, targets = _to_device(*next(batches), device)
        factor = lr_factor(it, milestones, config.gamma, config.warmup_iters, config.warmup_factor)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group["lr_scale"] * factor
        losses = model(images, targets)  # AMP, if on, is inside the backbone (see FPNBackbone)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite detection loss at iteration {it}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = float(loss.detach())
    return last


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, test_set: Dataset, config: DetectionConfig, device: torch.device,
            keypoint_category: int = 1) -> dict[str, list[dict[str, Any]]]:
    """COCO-format results per iou type (``bbox``, ``segm``, ``keypoints``) over the test set.

    Keypoint R-CNN predicts class 1 = person; ``keypoint_category`` is its COCO id.
    """
    model.eval()
    # Test resolution differs from the multi-scale training sizes.
    model.transform.min_size = (config.min_size_test,)
    model.transform.max_size = config.max_size_test
    loader = DataLoader(test_set, batch_size=config.eval_batch_size, shuffle=False,
                        num_workers=config.num_workers, collate_fn=collate_list)
    results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": [], "keypoints": []}
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        for out, target in zip(outputs, targets):
            out = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}
            if config.arch == "keypoint_rcnn":
                out["labels"] = torch.full_like(out["labels"], keypoint_category)
            _append_results(results, out, int(target["image_id"]), config.arch)
    return results


def _append_results(results: dict[str, list[dict[str, Any]]], out: dict[str, torch.Tensor],
                    image_id: int, arch: str) -> None:
    """Convert one image's torchvision output to COCO result dicts (xywh boxes, RLE masks)."""
    boxes = out["boxes"].tolist()
    scores = out["scores"].tolist()
    labels = out["labels"].tolist()
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        x0, y0, x1, y1 = box
        results["bbox"].append({"image_id": image_id, "category_id": int(label), "score": float(score),
                                "bbox": [x0, y0, x1 - x0, y1 - y0]})
        if arch == "mask_rcnn":
            binary = (out["masks"][i, 0] > 0.5).numpy().astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(binary))
            rle["counts"] = rle["counts"].decode("ascii")
            results["segm"].append({"image_id": image_id, "category_id": int(label), "score": float(score),
                                    "segmentation": rle})
        if arch == "keypoint_rcnn":
            results["keypoints"].append({"image_id": image_id, "category_id": int(label), "score": float(score),
                                         "keypoints": out["keypoints"][i].flatten().tolist()})


def coco_metrics(gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: list[int],
                 suffix: str, notes: list[str]) -> dict[str, float]:
    """COCOeval summary in percent; no detections -> zeros, undefined (-1) entries -> 0 with a note."""
    names = BOX_KEYS if iou_type != "keypoints" else ("ap", "ap50", "ap75", "apm", "apl")
    if iou_type == "segm":
        names = ("ap", "ap50", "ap75")
    keys = [f"{n}{suffix}" for n in names]
    if not results:
        notes.append(f"{iou_type}: the model made no detections on the test split; {', '.join(keys)} reported as 0.0")
        return {k: 0.0 for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
    evaluator = COCOeval(gt, dt, iou_type)
    evaluator.params.imgIds = image_ids
    if iou_type == "keypoints":
        k = len(results[0]["keypoints"]) // 3
        if k != len(evaluator.params.kpt_oks_sigmas):
            evaluator.params.kpt_oks_sigmas = np.full(k, 0.05)
            notes.append(f"keypoints: {k} keypoints are not COCO's 17; OKS uses sigma 0.05 for all")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    print(f"COCOeval {iou_type}:\n{buffer.getvalue()}", file=sys.stderr)
    # summarize() order: AP, AP50, AP75, APs, APm, APl (keypoints: AP, AP50, AP75, APm, APl).
    stat_index = {"ap": 0, "ap50": 1, "ap75": 2, "aps": 3, "apm": 4, "apl": 5}
    if iou_type == "keypoints":
        stat_index.update(apm=3, apl=4)
    metrics = {}
    for name, key in zip(names, keys):
        value = float(evaluator.stats[stat_index[name]])
        if value < 0:
            notes.append(f"{key}: undefined in COCOeval (no ground truth in that range), reported as 0.0")
            value = 0.0
        metrics[key] = 100.0 * value
    return metrics


# --------------------------------------------------------------------------- run


def _annotation_coco(path: Path) -> COCO:
    """Load a COCO JSON quietly (pycocotools prints progress to stdout)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _keypoint_category(coco: COCO) -> tuple[int, int]:
    """(COCO id, keypoint count) of the category that has keypoints (person in COCO)."""
    cats = [c for c in coco.loadCats(coco.getCatIds()) if c.get("keypoints")]
    if not cats:
        raise NotImplementedError("keypoint_rcnn needs a category with 'keypoints' names in the keypoint JSON")
    return int(cats[0]["id"]), len(cats[0]["keypoints"])


def run_detection(encoder: str | Path, data: str | Path, train_split: str, test_split: str,
                  spec: dict[str, Any] | str | None, seed: int, out: str | Path) -> dict[str, Any]:
    """Fine-tune a detector from ``encoder`` on ``data``, evaluate with COCOeval, write ``out``.

    ``out`` is only written (atomically) after a successful evaluation.
    """
    start = time.time()
    config = apply_overrides(DetectionConfig, spec)
    encoder_path = check_encoder_path(encoder)
    data = Path(data)
    read_meta(data)  # a clear "dataset not prepared" error before anything else
    generator = seed_everything(seed)
    device = pick_device()

    train_base, train_ann = open_coco(data, train_split)
    test_base, test_ann = open_coco(data, test_split)
    if config.arch == "keypoint_rcnn":
        train_ann, test_ann = keypoint_ann_path(data, train_split), keypoint_ann_path(data, test_split)
        for path in (train_ann, test_ann):
            if not path.is_file():
                raise NotImplementedError(
                    f"keypoint_rcnn needs person keypoint annotations, and {path} does not exist "
                    "(only COCO person_keypoints_*.json provide them)")
    train_coco, test_coco = _annotation_coco(Path(train_ann)), _annotation_coco(Path(test_ann))
    kp_category, num_keypoints = _keypoint_category(train_coco) if config.arch == "keypoint_rcnn" else (1, 17)
    # Labels are raw COCO category ids (non-contiguous for COCO), so classes = max id + 1 (background 0).
    num_classes = max(train_coco.getCatIds() + test_coco.getCatIds()) + 1

    encoder_module, meta = load_encoder(encoder_path)
    model = build_detector(encoder_module, config, num_classes, num_keypoints).to(device)
    train_set = DetectionTargets(train_base, train_coco, config.arch, config.flip_p)
    test_set = DetectionTargets(test_base, None, "faster_rcnn", 0.0)
    if len(train_set) == 0 or len(test_set) == 0:
        raise ValueError(f"empty split in {data}: {len(train_set)} train / {len(test_set)} test images")
    last_loss = train_detector(model, train_set, config, device, generator)

    results = predict(model, test_set, config, device, kp_category)
    image_ids = sorted(int(t["id"]) for t in test_base.images) if hasattr(test_base, "images") \
        else sorted(test_coco.getImgIds())
    notes: list[str] = []
    if config.layer_decay != 1.0 and not is_vit(encoder_module):
        notes.append(f"layer_decay {config.layer_decay} applies to ViT encoders only; not used for {meta['backbone']}")
    metrics = coco_metrics(test_coco, results["bbox"], "bbox", image_ids, "", notes)
    if config.arch == "mask_rcnn":
        metrics.update(coco_metrics(test_coco, results["segm"], "segm", image_ids, "_mask", notes))
    if config.arch == "keypoint_rcnn":
        metrics.update(coco_metrics(test_coco, results["keypoints"], "keypoints", image_ids, "_kp", notes))
    info = {"iterations": config.total_iterations(), "milestones": config.milestones(),
            "num_classes": num_classes, "num_train": len(train_set), "num_test": len(test_set),
            "num_detections": len(results["bbox"]), "device": str(device), "final_train_loss": last_loss,
            "encoder": str(encoder_path), "backbone": meta["backbone"], "seed": seed}
    return write_result(out, "detection", metrics, config, time.time() - start, notes, info, encoder_path, data)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sslaug.evaluate.detection``; input errors exit with status 1 and a one-line message."""
    return cli_main("detection", "Detection transfer of a pretrained encoder (R-CNN + FPN, COCOeval).",
                    run_detection, argv, test_split="val")


if __name__ == "__main__":
    sys.exit(main())

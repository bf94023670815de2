"""ViTDet's simple feature pyramid: a plain pretrained ViT as the backbone of torchvision's R-CNNs.

Rescuing Easy Samples (papers/001_9a6f22326c4191c2.txt, Table 2) transfers MoCo v3
ViT-B and DINOv2 ViT-L encoders to VOC07+12 and COCO detection / instance
segmentation without naming the detector. A plain ViT has one feature map, so this
module follows ViTDet (Li et al. 2022, "Exploring Plain Vision Transformer Backbones
for Object Detection", Sec. 3 and Fig. 2c; Detectron2's ``SimpleFeaturePyramid``):

* the last block's patch tokens (timm's ``forward_features``: all blocks + the
  pretrained final norm; prefix tokens - class and register tokens - dropped with
  the model's ``num_prefix_tokens``) reshaped to ``[B, D, H/p, W/p]``;
* four maps from that single map with scale factors 4, 2, 1, 1/2: two stride-2
  deconvolutions with LayerNorm + GELU between them (``D -> D/2 -> D/4``), one
  deconvolution (``D -> D/2``), identity, and a 2x2 max-pool;
* each projected to the FPN width by a 1x1 and a 3x3 conv, each followed by
  LayerNorm (ViTDet's norm; no conv bias);
* P6 by stride-2 subsampling of the last map (torchvision's ``LastLevelMaxPool``,
  as the ResNet FPN), which the R-CNN's RPN expects as its fifth level.

Scale factors follow the patch size: the pyramid keeps ViTDet's factors relative to
the patch grid, so the strides are ``p/4, p/2, p, 2p`` (+ ``4p`` for P6); for a
ViT-B/16 that is ViTDet's 4, 8, 16, 32 (+ 64), for the mini scale's patch-4 ViT it is
1, 2, 4, 8 (+ 16): 64, 32, 16, 8, 4 px maps on its 64 px detection images, the same
strides the mini convnet gives its FPN. torchvision's RoIAlign rounds each level's
scale to a power of two, so the patch size must be a power of two >= 4 (a patch-14
DINOv2 would need its grid resampled first; refused with a clear error).

Images are padded (``GeneralizedRCNNTransform.size_divisible``) to a multiple of the
coarsest stride, ``4p`` (64 for patch 16): a multiple of the patch size as the ViT
requires, and every pyramid level, P6 included, is then exactly ``size / stride``,
so anchor strides and RoIAlign scales are exact. (Detectron2 pads ViTDet inputs to a
1024 px square; torchvision pads each batch to its largest image instead.)

``freeze_at`` for a ViT mirrors Detectron2's ResNet meaning (stem, then four stages):
0 trains everything (ViTDet and MoCo fine-tune all blocks; the default), 1 freezes
the patch embedding + position embedding + prefix tokens, ``k`` in 2..4 additionally
the first ``(k - 1) * depth // 4`` blocks (the first quarter, half, three quarters:
3/6/9 of ViT-B's 12), 5 the whole encoder including its final norm (only the
pyramid and heads train).

Layer-wise lr decay (ViTDet: 0.7 for ViT-B, 0.8 for ViT-L, with AdamW) is offered as
``layer_decay`` in the detection config: block ``i`` (0-based) of a depth-``L`` ViT
gets ``decay ** (L - i)`` of the lr, the patch/position embedding ``decay ** (L + 1)``,
the final norm, pyramid and heads the full lr (ViTDet's ``get_vit_lr_decay_rate``).

Left out from ViTDet: window attention with a few global blocks and relative
position biases (the pretrained encoders are plain global-attention ViTs, which
ViTDet also evaluates), large-scale jitter augmentation, drop path, and its 1024 px
square input.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from sslaug.evaluate.common import autocast
from sslaug.models.backbones import vit_layer_ids, vit_lr_scales

#: ViTDet's scale factors of the four pyramid maps relative to the patch-token map.
SCALE_FACTORS: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
#: Parameter-name prefixes of a timm ViT's input side (layer 0 for freezing and lr decay).
def is_vit(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a timm-style plain ViT (patch embedding, blocks, prefix tokens)."""
    return all(hasattr(encoder, n) for n in ("patch_embed", "blocks", "num_prefix_tokens", "forward_features"))


def vit_patch_size(encoder: nn.Module) -> int:
    """The ViT's (square) patch size; a ``ValueError`` naming it if the pyramid cannot use it."""
    size = encoder.patch_embed.patch_size
    ph, pw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if ph != pw:
        raise ValueError(f"the ViTDet pyramid needs square patches, the encoder has {ph}x{pw}")
    if ph < 4 or ph & (ph - 1):
        raise ValueError(
            f"the ViTDet pyramid needs a patch size that is a power of two >= 4 (its finest level is p/4, and "
            f"torchvision's RoIAlign assumes power-of-two strides); the encoder has patch size {ph}"
        )
    return ph


def _layer_norm2d(channels: int) -> nn.Module:
    """LayerNorm over the channels of an NCHW map (ViTDet's "LN", eps 1e-6); timm's implementation."""
    from timm.layers import LayerNorm2d  # lazily: timm is already loaded whenever a ViT encoder is

    return LayerNorm2d(channels)


def _rescale(dim: int, scale: float) -> tuple[list[nn.Module], int]:
    """ViTDet's resampling layers for one scale factor, and their output width."""
    if scale == 4.0:
        return [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            _layer_norm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        ], dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    if scale == 0.5:
        return [nn.MaxPool2d(kernel_size=2, stride=2)], dim
    raise ValueError(f"unsupported ViTDet scale factor {scale}")


class ViTSimpleFeaturePyramid(nn.Module):
    """A pretrained timm ViT + ViTDet's simple feature pyramid, with FPNBackbone's interface.

    ``forward`` returns an ``OrderedDict`` of float32 maps ``"0"``..``"3"`` (strides
    ``p/4 .. 2p``) and ``"pool"`` (``4p``), all ``out_channels`` wide, as torchvision's
    R-CNNs and ``MultiScaleRoIAlign`` expect. ``size_divisible`` is the padding multiple
    the detector's transform must use. With ``amp`` on CUDA, the ViT and pyramid run
    under bf16 autocast (like ``FPNBackbone``); the heads stay float32.
    """

    def __init__(self, encoder: nn.Module, out_channels: int, amp: bool = False) -> None:
        super().__init__()
        if not is_vit(encoder):
            raise TypeError(f"ViTSimpleFeaturePyramid needs a timm VisionTransformer, not {type(encoder).__name__}")
        self.encoder = encoder  # the pretrained module itself, fine-tuned in place
        self.patch_size = vit_patch_size(encoder)
        dim = int(encoder.embed_dim)
        if dim // 4 < 1:
            raise ValueError(f"the ViTDet pyramid needs an embedding width >= 4, the encoder has {dim}")
        levels = []
        for scale in SCALE_FACTORS:
            layers, width = _rescale(dim, scale)
            layers += [
                Conv2dNormActivation(width, out_channels, 1, norm_layer=_layer_norm2d, activation_layer=None),
                Conv2dNormActivation(out_channels, out_channels, 3, norm_layer=_layer_norm2d, activation_layer=None),
            ]
            levels.append(nn.Sequential(*layers))
        self.levels = nn.ModuleList(levels)
        self.top_block = LastLevelMaxPool()
        self.out_channels = out_channels
        self.strides = [int(self.patch_size / s) for s in SCALE_FACTORS] + [4 * self.patch_size]
        self.size_divisible = self.strides[-1]
        self.amp = amp

    def patch_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's patch tokens as ``[B, D, H/p, W/p]`` (prefix tokens dropped)."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        if (h * self.patch_size, w * self.patch_size) != tuple(x.shape[-2:]):
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        tokens = self.encoder.forward_features(x)  # [B, prefix + h*w, D]; timm resamples pos_embed to h x w
        patches = tokens[:, self.encoder.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        with autocast(x.device, self.amp):
            features = self.patch_map(x)
            maps = [level(features) for level in self.levels]
            names = [str(i) for i in range(len(maps))]
            maps, names = self.top_block(maps, [], names)
        return OrderedDict((name, m.float()) for name, m in zip(names, maps))

    def _layer_ids(self) -> dict[str, int]:
        """Encoder parameter name -> layer id (``sslaug.models.backbones.vit_layer_ids``)."""
        return vit_layer_ids(self.encoder)

    def freeze(self, freeze_at: int) -> None:
        """Detectron2's FREEZE_AT for a ViT (see the module doc): 0 none .. 5 the whole encoder."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        if freeze_at == 0:
            return
        depth = len(self.encoder.blocks)
        limit = depth + 2 if freeze_at == 5 else 1 + (freeze_at - 1) * depth // 4  # layer ids below it freeze
        params = dict(self.encoder.named_parameters())
        for name, layer_id in self._layer_ids().items():
            if layer_id < limit:
                params[name].requires_grad_(False)

    def lr_scales(self, layer_decay: float) -> dict[int, float]:
        """``id(parameter)`` -> lr multiplier under layer-wise lr decay (encoder only; others 1)."""
        return vit_lr_scales(self.encoder, layer_decay)

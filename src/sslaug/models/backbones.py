"""Backbones: timm ResNets and ViTs, plus a tiny convnet for the mini scale.

Every backbone maps an image batch ``[B, 3, H, W]`` to pooled features
``[B, feature_dim]`` and exposes ``feature_dim``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Backbone name -> timm model name. ``_cifar`` suffix = CIFAR stem (3x3 conv, no max-pool).
TIMM_NAMES: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "vit_mini": "vit_small_patch16_224",
}
#: Architecture changes on top of the timm model (the mini ViT: patch 4 on 32 px images, 4 blocks of width 64).
TIMM_KWARGS: dict[str, dict[str, Any]] = {
    "vit_mini": {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0},
}


class TinyConvNet(nn.Module):
    """A 4-layer convnet for the mini scale: trains in seconds on 2 CPU cores."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.layer1 = block(3, width, 1)
        self.layer2 = block(width, 2 * width, 2)
        self.layer3 = block(2 * width, 4 * width, 2)
        self.layer4 = block(4 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 4 * width

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every stage (for detection transfer)."""
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)[-1]).flatten(1)


def _cifar_stem(model: nn.Module) -> None:
    """Replace the ImageNet stem (7x7/2 conv + max-pool) by a 3x3/1 conv, as for 32 px inputs."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def build_backbone(name: str, image_size: int = 224, **kwargs: Any) -> nn.Module:
    """Build a randomly initialised backbone by project name.

    Args:
        name: ``tiny``, ``resnet18``, ``resnet50`` (``_cifar`` suffix: the CIFAR stem; for a ViT,
            4 px patches),
            ``vit_small``, ``vit_base``, ``vit_large`` or ``vit_mini`` (the mini scale's ViT).
        image_size: input resolution; ViTs size their position embedding by it.
        kwargs: passed to the model constructor (e.g. ``width`` for ``tiny``, ``drop_path_rate``
            or ``init_values`` (LayerScale) for a ViT).
    """
    if name == "tiny":
        return TinyConvNet(**kwargs)
    cifar = name.endswith("_cifar")
    base = name.removesuffix("_cifar")
    if base not in TIMM_NAMES:
        known = ", ".join(["tiny", *TIMM_NAMES, "resnet18_cifar", "resnet50_cifar", "vit_small_cifar"])
        raise ValueError(f"unknown backbone {name!r}; known: {known}")
    import timm  # lazily: importing timm costs ~2 s, too much for every mini job

    extra: dict[str, Any] = {**TIMM_KWARGS.get(base, {}), **kwargs}
    if base.startswith("vit"):
        extra.setdefault("img_size", image_size)
        extra.setdefault("dynamic_img_size", True)
        if cifar:  # 32-64 px inputs: 4 px patches, the usual CIFAR ViT (an 8 x 8 grid at 32 px)
            extra.setdefault("patch_size", 4)
    model = timm.create_model(TIMM_NAMES[base], pretrained=False, num_classes=0, **extra)
    if cifar and base.startswith("resnet"):
        _cifar_stem(model)
    model.feature_dim = model.num_features
    return model


def encoder_state(backbone: nn.Module, name: str, image_size: int, spec: dict[str, Any]) -> dict[str, Any]:
    """The content of ``encoder.pt``: everything needed to rebuild the trained backbone."""
    return {
        "backbone": name,
        "image_size": image_size,
        "feature_dim": int(backbone.feature_dim),
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "spec": spec,
    }


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a backbone from an ``encoder.pt`` written by pretraining.

    Returns the module (eval mode) and the checkpoint's metadata (without weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint missing: {path}")
    state = torch.load(path, map_location=map_location, weights_only=False)
    model = build_backbone(
        state["backbone"], image_size=state["image_size"], **state.get("spec", {}).get("backbone_kwargs", {})
    )
    model.load_state_dict(state["state_dict"])
    model.eval()
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    return model, meta


def vit_tokens(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm ViT's final-norm class token ``[B, D]`` and patch tokens ``[B, N, D]``.

    With ``masks`` (``[B, N]`` booleans), the masked patch embeddings are replaced by
    ``mask_token`` before the position embedding, as iBOT and DINOv2 feed the student.
    Follows timm's own ``forward_features`` step by step.
    """
    if not hasattr(model, "patch_embed"):
        raise TypeError(f"patch tokens need a ViT backbone, not {type(model).__name__}")
    x = model.patch_embed(images)  # [B, h, w, D] (dynamic size) or [B, N, D]
    if masks is not None:
        if mask_token is None:
            raise ValueError("masks given without a mask_token")
        x = torch.where(masks.view(*x.shape[:-1], 1), mask_token.to(x.dtype), x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    x = model.blocks(x)
    x = model.norm(x)
    return x[:, 0], x[:, model.num_prefix_tokens :]


#: A ViT's embedding parameters: layer 0 of the layer-wise lr decay rule.
VIT_EMBEDDING_PARAMS: tuple[str, ...] = ("patch_embed.", "pos_embed", "cls_token", "reg_token", "norm_pre.")


def vit_layer_ids(encoder: nn.Module) -> dict[str, int]:
    """ViT parameter name -> layer id: 0 the embeddings, ``i + 1`` block ``i``, ``depth + 1`` the rest.

    The rule of BEiT / ViTDet / DINOv2 (``get_vit_lr_decay_rate``); timm's ``group_matcher`` puts
    the final norm with the last block, which would give the last block the full lr.
    """
    depth = len(encoder.blocks)
    ids = {}
    for name, _ in encoder.named_parameters():
        if name.startswith(VIT_EMBEDDING_PARAMS):
            ids[name] = 0
        elif name.startswith("blocks."):
            ids[name] = int(name.split(".")[1]) + 1
        else:
            ids[name] = depth + 1  # the final norm (and any other head-side parameter)
    return ids


def vit_lr_scales(encoder: nn.Module, layer_decay: float, patch_embed_lr_mult: float = 1.0) -> dict[int, float]:
    """``id(parameter)`` -> lr multiplier: ``layer_decay ** (depth + 1 - layer id)``, times
    ``patch_embed_lr_mult`` for the patch embedding (DINOv2's 0.2); parameters outside the encoder keep 1."""
    depth = len(encoder.blocks)
    params = dict(encoder.named_parameters())
    scales = {}
    for name, layer_id in vit_layer_ids(encoder).items():
        scale = layer_decay ** (depth + 1 - layer_id)
        if name.startswith("patch_embed."):
            scale *= patch_embed_lr_mult
        scales[id(params[name])] = scale
    return scales

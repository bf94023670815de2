"""Arbitrary neural style transfer (Ghiasi et al. 2017) and SASSL's stylization block.

Architecture (IMPLEMENTATION_NOTES.md, SASSL section; Magenta
``arbitrary-image-stylization-v1-256``):

* :class:`StylePredictor` -- InceptionV3 up to ``Mixed_6e`` (torchvision layout,
  ReLU6 activations as in Magenta's Inception arg scope, TF's SAME average pooling that
  leaves the padding out of border means), spatial mean, and a
  1x1 convolution bottleneck to the 100-d style vector ``z``.
* :class:`StyleTransformer` -- 3 contracting convolutions (batch norm), 5 residual
  blocks and 3 upsampling convolutions, each of the last 13 convolutions followed by
  conditional instance norm (CIN) whose per-channel ``gamma`` / ``beta`` are affine
  maps of ``z``; sigmoid output in [0, 1].
* :class:`Stylizer` -- both, plus SASSL Algorithm 1 (000_88efd4324cd49182.txt, Eqs. 9-11):
  feature blending ``z = (1 - alpha) z_c + alpha z_s`` then pixel interpolation
  ``i_cs = (1 - beta) i_c + beta T(i_c, z)``. ``alpha = 0`` keeps only the content's
  own style vector; ``beta = 0`` returns the content image unchanged.

Weight conversion: parameter shapes follow Magenta's checkpoint one to one so that
real weights can be converted in later:

* ``transformer.contract.convK.conv.weight`` <- ``transformer/contract/convK/weights``
  (HWIO -> OIHW); ``...bn.{bias,running_mean,running_var}`` <- ``BatchNorm/{beta,
  moving_mean,moving_variance}`` (slim batch norm has no ``gamma``, so there is none here).
* ``transformer.<scope>.norm.{beta,gamma}.{weight,bias}`` <- ``style_params/transformer/<scope>/
  StyleNorm/{Conv,Conv_1}/{weights,biases}`` (1x1 convs on ``z`` are linear maps; Magenta
  builds beta first, so slim names it ``Conv``; ``<scope>`` as in
  :data:`MAGENTA_STYLE_NORM_SCOPES`). Magenta keeps these maps in the
  style predictor; they live in the transformer here so that SASSL's blending acts on
  the 100-d ``z`` exactly as Magenta's interpolation does.
* ``predictor.trunk.*`` <- ``InceptionV3/*`` (torchvision's BN ``weight`` = 1: slim's
  Inception batch norm has no ``gamma`` either); ``predictor.bottleneck`` <- ``Conv/``.
  :mod:`sslaug.augment.stylizer_convert` does the conversion (rule ``convert_stylizer_weights``).

All images are float tensors ``[B, 3, H, W]`` in [0, 1] (Magenta feeds [0, 1] images
to both networks).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception_v3
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionC

logger = logging.getLogger(__name__)

#: Magenta scope names of the 13 conditional-instance-norm layers, in network order.
MAGENTA_STYLE_NORM_SCOPES: tuple[str, ...] = tuple(
    [f"residual/residual{b}/conv{c}" for b in range(1, 6) for c in (1, 2)]
    + ["expand/conv1/conv", "expand/conv2/conv", "expand/conv3/conv"]
)

#: InceptionV3 modules kept by the style predictor (everything up to ``Mixed_6e``).
_INCEPTION_TRUNK: tuple[str, ...] = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
    "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
)  # fmt: skip

_MIXED_6E_CHANNELS = 768
_MAGENTA_STYLE_SIZE = 256  # the "-256" of arbitrary-image-stylization-v1-256
_TINY_WIDTH = 0.25


@dataclass(frozen=True)
class StylizerConfig:
    """Which stylizer to build.

    Attributes:
        tiny: ``False`` (default) builds the paper's model: InceptionV3 style predictor
            and full-width transformer (32/64/128 channels), Magenta-compatible. ``True``
            builds the mini-scale model: a 3-layer conv style predictor instead of
            InceptionV3 and a transformer at ``width_multiplier`` 0.25 (8/16/32
            channels); same interface and 100-d style space, seconds on a CPU, but
            there are no pretrained weights for it (random init only).
        style_dim: style embedding size (Magenta: 100).
        width_multiplier: transformer channel multiplier (Magenta's ``alpha`` argument of
            ``transform``); ``None`` = 1.0 (full) or 0.25 (tiny).
        style_input_size: images are resized (shorter side, aspect kept) to this size
            before the style predictor; ``None`` = 256 for the full model (Magenta's
            training size; InceptionV3 also needs >= 75 px) and no resizing for tiny;
            ``0`` = never resize.
        predictor_relu6: InceptionV3 activations are ReLU6 (Magenta's slim arg scope)
            instead of torchvision's ReLU. Only affects the full predictor.
        seed: seed of the random initialisation when no weights are loaded, so that
            every process of a mini run builds the same random stylizer.
    """

    tiny: bool = False
    style_dim: int = 100
    width_multiplier: float | None = None
    style_input_size: int | None = None
    predictor_relu6: bool = True
    seed: int = 0

    @property
    def resolved_width_multiplier(self) -> float:
        """The transformer width multiplier after applying the ``tiny`` default."""
        if self.width_multiplier is not None:
            return float(self.width_multiplier)
        return _TINY_WIDTH if self.tiny else 1.0

    @property
    def resolved_style_input_size(self) -> int | None:
        """Predictor input size (shorter side) or ``None`` for no resizing."""
        if self.style_input_size is None:
            return None if self.tiny else _MAGENTA_STYLE_SIZE
        return self.style_input_size or None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> StylizerConfig:
        """Build from a JSON-style mapping; unknown keys are an error (typos fail loudly)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown StylizerConfig keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        return asdict(self)


# --------------------------------------------------------------------------- style predictor


class _BasicConv2dReLU6(BasicConv2d):
    """torchvision's Inception conv block with Magenta's ReLU6 (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)), inplace=True)


def _tf_same_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TF-slim's 3x3 SAME average pooling: the mean over in-image pixels only (padding not counted)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionATF(InceptionA):
    """torchvision's InceptionA with TF's border pooling (its ``avg_pool2d`` counts the zero padding)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_tf_same_avg_pool(x))]


class _InceptionCTF(InceptionC):
    """torchvision's InceptionC with TF's border pooling."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = conv(dbl)
        return [self.branch1x1(x), branch7x7, dbl, self.branch_pool(_tf_same_avg_pool(x))]


class StylePredictor(nn.Module):
    """InceptionV3 to ``Mixed_6e`` -> spatial mean -> 1x1 conv bottleneck -> ``[B, style_dim]``."""

    def __init__(self, style_dim: int = 100, relu6: bool = True) -> None:
        super().__init__()
        # init_weights=True: truncated normal (std 0.1), as slim's Inception initialiser.
        net = inception_v3(weights=None, aux_logits=False, init_weights=True)
        self.trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in _INCEPTION_TRUNK))
        if relu6:
            # Swap the class rather than rebuild: keeps torchvision's module tree and
            # state-dict keys, only the activation changes.
            for module in self.trunk.modules():
                if type(module) is BasicConv2d:
                    module.__class__ = _BasicConv2dReLU6
        # Magenta's weights were trained with TF's SAME pooling; same swap, same state-dict keys.
        for module in self.trunk.modules():
            if type(module) is InceptionA:
                module.__class__ = _InceptionATF
            elif type(module) is InceptionC:
                module.__class__ = _InceptionCTF
        self.bottleneck = nn.Conv2d(_MIXED_6E_CHANNELS, style_dim, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.trunk(images).mean(dim=(2, 3), keepdim=True)
        return self.bottleneck(feats).flatten(1)


class TinyStylePredictor(nn.Module):
    """Mini-scale stand-in for :class:`StylePredictor`: 3 strided convs, mean, bottleneck."""

    def __init__(self, style_dim: int = 100, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += [
                nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width, eps=1e-3),
                nn.ReLU(inplace=True),
            ]
            in_ch = width
        self.trunk = nn.Sequential(*layers)
        self.bottleneck = nn.Conv2d(in_ch, style_dim, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.trunk(images).mean(dim=(2, 3), keepdim=True)
        return self.bottleneck(feats).flatten(1)


# --------------------------------------------------------------------------- style transformer


class _BetaOnlyBatchNorm(nn.BatchNorm2d):
    """Batch norm with a learned offset but no scale (slim's ``batch_norm`` default)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-3, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose per-channel scale / offset are affine maps of the style vector."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Linear(style_dim, channels)
        self.beta = nn.Linear(style_dim, channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # Magenta: tf.nn.moments (biased variance) + batch_normalization, epsilon 1e-5.
        x = F.instance_norm(x, eps=1e-5)
        return x * self.gamma(z)[:, :, None, None] + self.beta(z)[:, :, None, None]


def _reflect_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Magenta's ``model_util.conv2d``: reflect padding then a VALID conv, no bias (a norm follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, padding_mode="reflect", bias=False)


class _ContractLayer(nn.Module):
    """Conv -> batch norm -> ReLU (the style-independent encoder)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = _reflect_conv(in_ch, out_ch, kernel, stride)
        self.bn = _BetaOnlyBatchNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _ResidualBlock(nn.Module):
    """x + CIN(conv(ReLU(CIN(conv(x))))), as Magenta's ``residual_block``."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv1 = _reflect_conv(channels, channels, 3)
        self.norm1 = ConditionalInstanceNorm(channels, style_dim)
        self.conv2 = _reflect_conv(channels, channels, 3)
        self.norm2 = ConditionalInstanceNorm(channels, style_dim)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x), z))
        return x + self.norm2(self.conv2(h), z)


class _UpsampleLayer(nn.Module):
    """Nearest-neighbour upsampling (if ``scale`` > 1) -> conv -> CIN -> activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, scale: int, style_dim: int, final: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.final = final
        self.conv = _reflect_conv(in_ch, out_ch, kernel)
        self.norm = ConditionalInstanceNorm(out_ch, style_dim)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        h = self.norm(self.conv(x), z)
        return torch.sigmoid(h) if self.final else F.relu(h)


class StyleTransformer(nn.Module):
    """Magenta's ``nza_model.transform``: content image + style vector -> stylized image in [0, 1]."""

    def __init__(self, style_dim: int = 100, width_multiplier: float = 1.0, num_residual: int = 5) -> None:
        super().__init__()
        c1, c2, c3 = (int(width_multiplier * c) for c in (32, 64, 128))
        self.contract = nn.ModuleDict(
            {
                "conv1": _ContractLayer(3, c1, 9, 1),
                "conv2": _ContractLayer(c1, c2, 3, 2),
                "conv3": _ContractLayer(c2, c3, 3, 2),
            }
        )
        self.residual = nn.ModuleDict({f"residual{i + 1}": _ResidualBlock(c3, style_dim) for i in range(num_residual)})
        self.expand = nn.ModuleDict(
            {
                "conv1": _UpsampleLayer(c3, c2, 3, 2, style_dim),
                "conv2": _UpsampleLayer(c2, c1, 3, 2, style_dim),
                "conv3": _UpsampleLayer(c1, 3, 9, 1, style_dim, final=True),
            }
        )
        self._init_magenta()

    def _init_magenta(self) -> None:
        """Magenta's transformer init N(0, 0.01); CIN starts near identity (gamma ~ 1, beta ~ 0)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
        for norm in self.style_norms():
            for lin, bias in ((norm.gamma, 1.0), (norm.beta, 0.0)):
                nn.init.normal_(lin.weight, 0.0, 0.01)
                nn.init.constant_(lin.bias, bias)

    def style_norms(self) -> list[ConditionalInstanceNorm]:
        """The CIN layers in network order (matching :data:`MAGENTA_STYLE_NORM_SCOPES`)."""
        norms: list[ConditionalInstanceNorm] = []
        for block in self.residual.values():
            norms += [block.norm1, block.norm2]
        norms += [layer.norm for layer in self.expand.values()]
        return norms

    def forward(self, content: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = content
        for layer in self.contract.values():
            h = layer(h)
        for block in self.residual.values():
            h = block(h, z)
        for layer in self.expand.values():
            h = layer(h, z)
        if h.shape[-2:] != content.shape[-2:]:
            # Sides not divisible by 4 lose pixels in the two stride-2 convs.
            h = F.interpolate(h, size=content.shape[-2:], mode="bilinear", align_corners=False)
        return h


# --------------------------------------------------------------------------- stylizer


def _per_sample(value: float | torch.Tensor, batch: int, ndim: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``[B]`` factor as a tensor broadcastable against a ``[B, ...]`` tensor of ``ndim`` dims."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"expected a scalar or a [{batch}] tensor, got shape {tuple(t.shape)}")
    return t.reshape(batch, *([1] * (ndim - 1)))


class Stylizer(nn.Module):
    """Style predictor + transformer, with SASSL's blended stylization (:meth:`stylize`)."""

    def __init__(self, config: StylizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or StylizerConfig()
        cfg = self.config
        self.predictor: nn.Module = (
            TinyStylePredictor(cfg.style_dim) if cfg.tiny else StylePredictor(cfg.style_dim, cfg.predictor_relu6)
        )
        self.transformer = StyleTransformer(cfg.style_dim, cfg.resolved_width_multiplier)

    @property
    def style_dim(self) -> int:
        """Size of the style embedding ``z``."""
        return self.config.style_dim

    def embed_style(self, images: torch.Tensor) -> torch.Tensor:
        """Style vectors ``z = F(images)``: ``[B, 3, H, W]`` in [0, 1] -> ``[B, style_dim]``."""
        size = self.config.resolved_style_input_size
        if size is not None and min(images.shape[-2:]) != size:
            h, w = images.shape[-2:]
            scale = size / min(h, w)
            new_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
            images = F.interpolate(images, size=new_hw, mode="bilinear", align_corners=False, antialias=True)
        return self.predictor(images)

    def stylize(
        self,
        content: torch.Tensor,
        style_embedding: torch.Tensor,
        alpha: float | torch.Tensor,
        beta: float | torch.Tensor,
        content_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SASSL Algorithm 1 for a batch of content images.

        Args:
            content: ``i_c``, ``[B, 3, H, W]`` in [0, 1].
            style_embedding: ``z_s``, ``[B, style_dim]`` (or ``[style_dim]``, shared).
            alpha: blending factor (scalar or ``[B]``): ``z = (1 - alpha) z_c + alpha z_s``
                with ``z_c = F(i_c)``; 0 keeps the content's own style vector.
            beta: interpolation factor (scalar or ``[B]``):
                ``i_cs = (1 - beta) i_c + beta T(i_c, z)``; 0 returns ``i_c``.
            content_embedding: ``z_c`` if the caller already has it (saves a style-predictor pass).

        Returns:
            The stylized batch ``[B, 3, H, W]`` in [0, 1].
        """
        batch = content.shape[0]
        z_s = style_embedding.to(device=content.device, dtype=content.dtype)
        if z_s.ndim == 1:
            z_s = z_s.expand(batch, -1)
        a = _per_sample(alpha, batch, 2, content)
        b = _per_sample(beta, batch, 4, content)
        z_c = self.embed_style(content) if content_embedding is None else content_embedding
        z = (1 - a) * z_c + a * z_s  # Eq. 10: feature blending
        stylized = self.transformer(content, z)  # Eq. 9
        return (1 - b) * content + b * stylized  # Eq. 11: pixel interpolation

    def forward(
        self,
        content: torch.Tensor,
        style_embedding: torch.Tensor,
        alpha: float | torch.Tensor,
        beta: float | torch.Tensor,
    ) -> torch.Tensor:
        """Alias of :meth:`stylize`."""
        return self.stylize(content, style_embedding, alpha, beta)


def build_stylizer(config: StylizerConfig | None = None) -> Stylizer:
    """A randomly initialised stylizer, reproducible through ``config.seed``."""
    config = config or StylizerConfig()
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return Stylizer(config)


def load_stylizer(path: str | os.PathLike | None, config: StylizerConfig | None = None) -> Stylizer:
    """Build a frozen stylizer in eval mode, with weights from ``path``.

    Args:
        path: a ``torch.save``'d state dict (or ``{"state_dict": ...}``) of
            :class:`Stylizer`, e.g. converted from Magenta's checkpoint; ``None`` or
            ``"random"`` gives a random init (mini scale only) and logs a warning.
        config: architecture; default the full Magenta-compatible model.
    """
    config = config or StylizerConfig()
    model = build_stylizer(config)
    if path is None or str(path) == "random":
        logger.warning(
            "no stylizer weights given: using a RANDOMLY initialised stylizer (tiny=%s, seed=%d); "
            "its 'styles' are arbitrary, acceptable for the mini scale only",
            config.tiny,
            config.seed,
        )
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["state_dict"] if isinstance(obj, Mapping) and "state_dict" in obj else obj
        model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model

"""Convert Magenta's released arbitrary-image-stylization checkpoint to a :class:`Stylizer` state dict.

Magenta (``magenta/models/arbitrary_image_stylization``) releases the weights of
Ghiasi et al. 2017 as a TF1 checkpoint in ``arbitrary_style_transfer.tar.gz``
(:data:`MAGENTA_URL`, linked from that model's README; the archive holds
``arbitrary_style_transfer/model.ckpt.{index,data-*}``). Magenta publishes no checksum for
it, so none is verified: the converted file records the archive's sha256 instead.

The mapping (:func:`magenta_variable_map`) is pure: TF variable name -> state-dict key, from
the Magenta source (``arbitrary_image_stylization_build_model.py``, ``nza_model.py``,
``image_stylization/model.py``) and TF-slim's ``inception_v3_base``:

* transformer convs ``transformer/{contract/convK, residual/residualR/convJ, expand/convK/conv}/weights``
  (HWIO -> OIHW); the contracting convs' slim batch norm ``BatchNorm/{beta, moving_mean,
  moving_variance}`` (no ``gamma``: slim's default ``scale=False``).
* conditional instance norm: ``style_params/transformer/<scope>/StyleNorm/Conv`` is the
  ``beta`` and ``.../Conv_1`` the ``gamma`` 1x1 conv on the 100-d bottleneck (Magenta builds
  beta first, so slim names it ``Conv``); ``[1, 1, 100, C]`` -> ``Linear`` weight ``[C, 100]``.
* style predictor: ``InceptionV3/<block>/<Branch_i>/<conv>/{weights, BatchNorm/...}`` (slim's
  names, quirks included: ``Mixed_5c/Branch_1/Conv_1_0c_5x5``, ``Mixed_6a/*/Conv2d_1a_1x1`` for
  3x3 convs) and the bottleneck ``Conv/{weights, biases}``. Slim's Inception batch norm has
  no ``gamma`` either, so torchvision's BN ``weight`` becomes ones.

Only the variables of the inference graph are read; a training checkpoint's optimizer
slots (``.../Adam``), ``global_step`` and loss networks (``vgg_16/``) are ignored. Every
missing, unexpected or mis-shaped variable is reported at once (:class:`ConversionError`).

CLI (the ``convert_stylizer_weights`` rule; ``tensorflow`` is imported only here, to read
the checkpoint)::

    python -m sslaug.augment.stylizer_convert --checkpoint URL|ARCHIVE|DIR|PREFIX --out WEIGHTS.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The released checkpoint (Magenta's arbitrary_image_stylization README, "Download our pre-trained model").
MAGENTA_URL = "https://storage.googleapis.com/download.magenta.tensorflow.org/models/arbitrary_style_transfer.tar.gz"
#: Checkpoint prefix inside the extracted archive.
MAGENTA_CHECKPOINT_IN_ARCHIVE = "arbitrary_style_transfer/model.ckpt"
#: Magenta publishes no checksum for the archive: nothing to verify against.
MAGENTA_SHA256: str | None = None

#: Top-level scopes of the inference graph's variables (everything else is ignored).
MODEL_SCOPES = ("InceptionV3/", "Conv/", "transformer/", "style_params/")
#: Suffixes of optimizer / averaging slots that training checkpoints keep beside each variable.
SLOT_SUFFIXES = ("/Adam", "/Adam_1", "/Momentum", "/RMSProp", "/RMSProp_1", "/ExponentialMovingAverage")

# torchvision InceptionV3 submodule -> slim scope, per block kind (slim's inception_v3_base).
_INCEPTION_A = {
    "branch1x1": "Branch_0/Conv2d_0a_1x1",
    "branch5x5_1": "Branch_1/Conv2d_0a_1x1",
    "branch5x5_2": "Branch_1/Conv2d_0b_5x5",
    "branch3x3dbl_1": "Branch_2/Conv2d_0a_1x1",
    "branch3x3dbl_2": "Branch_2/Conv2d_0b_3x3",
    "branch3x3dbl_3": "Branch_2/Conv2d_0c_3x3",
    "branch_pool": "Branch_3/Conv2d_0b_1x1",
}
_INCEPTION_B = {
    "branch3x3": "Branch_0/Conv2d_1a_1x1",
    "branch3x3dbl_1": "Branch_1/Conv2d_0a_1x1",
    "branch3x3dbl_2": "Branch_1/Conv2d_0b_3x3",
    "branch3x3dbl_3": "Branch_1/Conv2d_1a_1x1",
}
_INCEPTION_C = {
    "branch1x1": "Branch_0/Conv2d_0a_1x1",
    "branch7x7_1": "Branch_1/Conv2d_0a_1x1",
    "branch7x7_2": "Branch_1/Conv2d_0b_1x7",
    "branch7x7_3": "Branch_1/Conv2d_0c_7x1",
    "branch7x7dbl_1": "Branch_2/Conv2d_0a_1x1",
    "branch7x7dbl_2": "Branch_2/Conv2d_0b_7x1",
    "branch7x7dbl_3": "Branch_2/Conv2d_0c_1x7",
    "branch7x7dbl_4": "Branch_2/Conv2d_0d_7x1",
    "branch7x7dbl_5": "Branch_2/Conv2d_0e_1x7",
    "branch_pool": "Branch_3/Conv2d_0b_1x1",
}
_INCEPTION_BLOCKS: dict[str, dict[str, str]] = {
    "Mixed_5b": _INCEPTION_A,
    # Slim's Mixed_5c names its 5x5 branch differently from 5b and 5d.
    "Mixed_5c": {**_INCEPTION_A, "branch5x5_1": "Branch_1/Conv2d_0b_1x1", "branch5x5_2": "Branch_1/Conv_1_0c_5x5"},
    "Mixed_5d": _INCEPTION_A,
    "Mixed_6a": _INCEPTION_B,
    **{f"Mixed_6{c}": _INCEPTION_C for c in "bcde"},
}
_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
_BN_SLIM = {"bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class ConversionError(ValueError):
    """The checkpoint does not match the stylizer; the message lists every offending variable."""


# --------------------------------------------------------------------------- layout transforms


def conv_hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """TF conv kernel ``[kh, kw, in, out]`` -> PyTorch ``[out, in, kh, kw]``."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def conv1x1_to_linear(kernel: np.ndarray) -> np.ndarray:
    """A 1x1 conv on a 1x1 map ``[1, 1, in, out]`` is a dense layer: PyTorch ``Linear`` weight ``[out, in]``."""
    return np.ascontiguousarray(kernel[0, 0].T)


def _identity(value: np.ndarray) -> np.ndarray:
    return value


@dataclass(frozen=True)
class Source:
    """Where one state-dict entry comes from.

    Attributes:
        tf_name: the TF variable, or ``None`` for entries TF has no counterpart of
            (``fill``: BN scale ones, ``num_batches_tracked`` zero).
        transform: TF layout -> PyTorch layout.
        tf_shape: maps the PyTorch shape to the TF shape the checkpoint must have.
        fill: constant for entries without a TF variable.
    """

    tf_name: str | None
    transform: Callable[[np.ndarray], np.ndarray] = _identity
    tf_shape: Callable[[tuple[int, ...]], tuple[int, ...]] = tuple
    fill: float | None = None


def _oihw_to_hwio_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    out_ch, in_ch, kh, kw = shape
    return (kh, kw, in_ch, out_ch)


def _linear_to_conv1x1_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    out_features, in_features = shape
    return (1, 1, in_features, out_features)


_CONV = {"transform": conv_hwio_to_oihw, "tf_shape": _oihw_to_hwio_shape}
_DENSE = {"transform": conv1x1_to_linear, "tf_shape": _linear_to_conv1x1_shape}


def _conv_bn_source(tf_scope: str, leaf: str) -> Source:
    """A slim ``conv2d`` + ``batch_norm`` (no gamma) for the PyTorch conv/bn ``leaf`` key."""
    if leaf == "conv.weight":
        return Source(f"{tf_scope}/weights", **_CONV)
    module, _, param = leaf.partition(".")
    if module == "bn" and param in _BN_SLIM:
        return Source(f"{tf_scope}/BatchNorm/{_BN_SLIM[param]}")
    if leaf == "bn.weight":
        return Source(None, fill=1.0)  # slim batch norm has no scale
    if leaf == "bn.num_batches_tracked":
        return Source(None, fill=0)
    raise KeyError(leaf)


def _predictor_source(key: str) -> Source:
    """``predictor.*`` keys of the full (InceptionV3) style predictor."""
    rest = key.removeprefix("predictor.")
    if rest.startswith("bottleneck."):
        param = rest.removeprefix("bottleneck.")
        return Source("Conv/weights", **_CONV) if param == "weight" else Source("Conv/biases")
    block, sub, leaf = rest.removeprefix("trunk.").split(".", 2)
    if block in _STEM:
        return _conv_bn_source(f"InceptionV3/{block}", f"{sub}.{leaf}")
    return _conv_bn_source(f"InceptionV3/{block}/{_INCEPTION_BLOCKS[block][sub]}", leaf)


def _style_norm_source(scope: str, which: str, param: str) -> Source:
    """CIN ``gamma`` / ``beta`` maps: slim ``Conv_1`` / ``Conv`` under the scope's ``StyleNorm``."""
    conv = {"beta": "Conv", "gamma": "Conv_1"}[which]
    tf_scope = f"style_params/transformer/{scope}/StyleNorm/{conv}"
    return Source(f"{tf_scope}/weights", **_DENSE) if param == "weight" else Source(f"{tf_scope}/biases")


def _transformer_source(key: str) -> Source:
    """``transformer.*`` keys of :class:`~sslaug.augment.stylizer.StyleTransformer`."""
    parts = key.split(".")
    stage, layer = parts[1], parts[2]
    if stage == "contract":
        return _conv_bn_source(f"transformer/contract/{layer}", ".".join(parts[3:]))
    if stage == "residual":  # transformer.residual.residualR.{convJ.weight, normJ.{gamma,beta}.{weight,bias}}
        module = parts[3]
        conv = "conv" + module[-1]
        if module.startswith("conv"):
            return Source(f"transformer/residual/{layer}/{conv}/weights", **_CONV)
        return _style_norm_source(f"residual/{layer}/{conv}", parts[4], parts[5])
    if stage == "expand":  # transformer.expand.convK.{conv.weight, norm.{gamma,beta}.{weight,bias}}
        if parts[3] == "conv":
            return Source(f"transformer/expand/{layer}/conv/weights", **_CONV)
        return _style_norm_source(f"expand/{layer}/conv", parts[4], parts[5])
    raise KeyError(key)


def magenta_variable_map(keys: Iterable[str]) -> dict[str, Source]:
    """State-dict key -> its :class:`Source` in Magenta's checkpoint, for every key of a full Stylizer.

    Raises:
        ConversionError: for keys with no Magenta counterpart (e.g. a tiny stylizer).
    """
    out: dict[str, Source] = {}
    unknown = []
    for key in keys:
        try:
            if key.startswith("predictor."):
                out[key] = _predictor_source(key)
            elif key.startswith("transformer."):
                out[key] = _transformer_source(key)
            else:
                raise KeyError(key)
        except (KeyError, ValueError, IndexError):
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} stylizer parameters have no Magenta counterpart (only the full model, "
            f"StylizerConfig(tiny=False), width 1.0, style_dim 100, converts): {unknown[:10]}"
        )
    return out


def is_model_variable(name: str) -> bool:
    """Whether a checkpoint variable belongs to the inference graph (not a slot, step or loss network)."""
    return name.startswith(MODEL_SCOPES) and not name.endswith(SLOT_SUFFIXES)


def convert_magenta(variables: Mapping[str, np.ndarray], reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Map Magenta's ``{tf_name: array}`` to a :class:`Stylizer` state dict (torch tensors).

    Args:
        variables: checkpoint variables; names outside :data:`MODEL_SCOPES` and optimizer
            slots are ignored.
        reference: the target state dict (for keys, shapes and dtypes); default that of
            ``build_stylizer(StylizerConfig())``, the Magenta-compatible model.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped variable.
    """
    import torch

    if reference is None:
        from sslaug.augment.stylizer import StylizerConfig, build_stylizer

        reference = build_stylizer(StylizerConfig()).state_dict()
    sources = magenta_variable_map(reference)
    state: dict[str, Any] = {}
    missing: list[str] = []
    misshaped: list[str] = []
    used: set[str] = set()
    for key, src in sources.items():
        target = reference[key]
        if src.tf_name is None:
            state[key] = torch.full_like(target, src.fill)
            continue
        used.add(src.tf_name)
        if src.tf_name not in variables:
            missing.append(src.tf_name)
            continue
        value = np.asarray(variables[src.tf_name])
        expected = src.tf_shape(tuple(target.shape))
        if tuple(value.shape) != expected:
            misshaped.append(f"{src.tf_name}: checkpoint {list(value.shape)}, expected {list(expected)} (for {key})")
            continue
        state[key] = torch.from_numpy(np.array(src.transform(value), dtype=np.float32)).to(target.dtype)
    unexpected = sorted(name for name in variables if is_model_variable(name) and name not in used)
    problems = [
        f"{len(items)} {what}:\n  " + "\n  ".join(items)
        for what, items in (("missing", sorted(missing)), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if items
    ]
    if problems:
        raise ConversionError("checkpoint does not match the Magenta stylizer: " + "\n".join(problems))
    return state


# --------------------------------------------------------------------------- reading (TF) and the CLI


def read_tf_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """The inference-graph variables of a TF checkpoint (imports ``tensorflow``, the only place that does)."""
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ConversionError(
            "reading a TF checkpoint needs tensorflow (envs/magenta_convert.yaml: tensorflow-cpu); "
            f"it is not installed here ({err})"
        ) from err
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as err:
        raise ConversionError(f"cannot read TF checkpoint {prefix}: {err}") from err
    names = sorted(reader.get_variable_to_shape_map())
    ignored = [n for n in names if not is_model_variable(n)]
    if ignored:
        logger.info("ignoring %d non-model variables (e.g. %s)", len(ignored), ignored[:3])
    return {name: reader.get_tensor(name) for name in names if is_model_variable(name)}


def find_checkpoint_prefix(root: Path) -> Path:
    """The checkpoint prefix under ``root`` (a prefix itself, or a directory holding one ``*.index``)."""
    if Path(f"{root}.index").is_file():
        return root
    if root.is_dir():
        expected = root / MAGENTA_CHECKPOINT_IN_ARCHIVE
        if Path(f"{expected}.index").is_file():
            return expected
        indexes = sorted(root.rglob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        if indexes:
            raise ConversionError(f"{root} holds several checkpoints {indexes}; pass the prefix of one")
    raise ConversionError(f"no TF checkpoint at {root} (expected PREFIX.index, or a directory with one *.index)")


def resolve_checkpoint(checkpoint: str, download_dir: Path, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """URL / archive / directory / prefix -> (checkpoint prefix, provenance for the output file)."""
    from sslaug.data.sources import Resource, fetch
    from sslaug.io import sha256sum

    provenance: dict[str, Any] = {"checkpoint": checkpoint}
    path = Path(checkpoint)
    if checkpoint.startswith(("http://", "https://")):
        name = checkpoint.rsplit("/", 1)[-1]
        path = fetch(Resource(url=checkpoint, filename=name, sha256=MAGENTA_SHA256), download_dir)
        provenance["url"] = checkpoint
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        from torchvision.datasets.utils import extract_archive

        provenance["archive_sha256"] = sha256sum(path)
        logger.info("extracting %s (sha256 %s; Magenta publishes none to check)", path, provenance["archive_sha256"])
        extract_archive(str(path), str(workdir))
        path = workdir
    return find_checkpoint_prefix(path), provenance


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the ``convert_stylizer_weights`` rule."""
    p = argparse.ArgumentParser(prog="python -m sslaug.augment.stylizer_convert", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint",
        default=MAGENTA_URL,
        help="Magenta checkpoint: URL of the released archive (default), a .tar.gz, a directory or a prefix",
    )
    p.add_argument("--out", required=True, help="output state dict (.pt), written atomically")
    p.add_argument("--download-dir", default="data/_downloads", help="where a downloaded archive is cached")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Convert; errors print what is wrong (naming the checkpoint / variables) and return 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sslaug.data.formats import DataError
    from sslaug.io import atomic_torch_save

    try:
        with tempfile.TemporaryDirectory(prefix="magenta_ckpt_") as tmp:
            prefix, provenance = resolve_checkpoint(args.checkpoint, Path(args.download_dir), Path(tmp))
            logger.info("reading %s", prefix)
            variables = read_tf_checkpoint(prefix)
        state = convert_magenta(variables)
        from sslaug.augment.stylizer import StylizerConfig, build_stylizer

        build_stylizer(StylizerConfig()).load_state_dict(state, strict=True)  # the file loads as written
    except (ConversionError, DataError, OSError) as err:
        print(f"stylizer_convert: error: {err}", file=sys.stderr)
        return 2
    atomic_torch_save(
        {"state_dict": state, "source": {**provenance, "format": "magenta arbitrary_style_transfer"}}, args.out
    )
    logger.info("wrote %s (%d tensors)", args.out, len(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())

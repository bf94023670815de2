"""Magenta checkpoint -> Stylizer conversion (sslaug.augment.stylizer_convert).

The fake checkpoint is written from Magenta's and TF-slim's source, not from the
converter's table: every name and TF shape below is what ``build_model`` +
``inception_v3_base(final_endpoint='Mixed_6e')`` create, so a mapping slip (a wrong
slim name, a swapped gamma/beta, a transposed kernel) fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from sslaug.augment import stylizer_convert as sc
from sslaug.augment.stylizer import MAGENTA_STYLE_NORM_SCOPES, Stylizer, StylizerConfig, build_stylizer

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- Magenta's variables


def _slim_inception_convs() -> list[tuple[str, int, int, int, int]]:
    """(scope, kh, kw, in, out) of every conv of slim's inception_v3_base up to Mixed_6e."""
    convs = [
        ("Conv2d_1a_3x3", 3, 3, 3, 32),
        ("Conv2d_2a_3x3", 3, 3, 32, 32),
        ("Conv2d_2b_3x3", 3, 3, 32, 64),
        ("Conv2d_3b_1x1", 1, 1, 64, 80),
        ("Conv2d_4a_3x3", 3, 3, 80, 192),
    ]
    for block, cin, b1a, b1b, pool in (
        ("Mixed_5b", 192, "Conv2d_0a_1x1", "Conv2d_0b_5x5", 32),
        ("Mixed_5c", 256, "Conv2d_0b_1x1", "Conv_1_0c_5x5", 64),
        ("Mixed_5d", 288, "Conv2d_0a_1x1", "Conv2d_0b_5x5", 64),
    ):
        convs += [
            (f"{block}/Branch_0/Conv2d_0a_1x1", 1, 1, cin, 64),
            (f"{block}/Branch_1/{b1a}", 1, 1, cin, 48),
            (f"{block}/Branch_1/{b1b}", 5, 5, 48, 64),
            (f"{block}/Branch_2/Conv2d_0a_1x1", 1, 1, cin, 64),
            (f"{block}/Branch_2/Conv2d_0b_3x3", 3, 3, 64, 96),
            (f"{block}/Branch_2/Conv2d_0c_3x3", 3, 3, 96, 96),
            (f"{block}/Branch_3/Conv2d_0b_1x1", 1, 1, cin, pool),
        ]
    convs += [
        ("Mixed_6a/Branch_0/Conv2d_1a_1x1", 3, 3, 288, 384),
        ("Mixed_6a/Branch_1/Conv2d_0a_1x1", 1, 1, 288, 64),
        ("Mixed_6a/Branch_1/Conv2d_0b_3x3", 3, 3, 64, 96),
        ("Mixed_6a/Branch_1/Conv2d_1a_1x1", 3, 3, 96, 96),
    ]
    for block, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs += [
            (f"{block}/Branch_0/Conv2d_0a_1x1", 1, 1, 768, 192),
            (f"{block}/Branch_1/Conv2d_0a_1x1", 1, 1, 768, c),
            (f"{block}/Branch_1/Conv2d_0b_1x7", 1, 7, c, c),
            (f"{block}/Branch_1/Conv2d_0c_7x1", 7, 1, c, 192),
            (f"{block}/Branch_2/Conv2d_0a_1x1", 1, 1, 768, c),
            (f"{block}/Branch_2/Conv2d_0b_7x1", 7, 1, c, c),
            (f"{block}/Branch_2/Conv2d_0c_1x7", 1, 7, c, c),
            (f"{block}/Branch_2/Conv2d_0d_7x1", 7, 1, c, c),
            (f"{block}/Branch_2/Conv2d_0e_1x7", 1, 7, c, 192),
            (f"{block}/Branch_3/Conv2d_0b_1x1", 1, 1, 768, 192),
        ]
    return [(f"InceptionV3/{scope}", kh, kw, cin, cout) for scope, kh, kw, cin, cout in convs]


def magenta_variables(seed: int = 0) -> dict[str, np.ndarray]:
    """A fake checkpoint with exactly the variables of Magenta's arbitrary-stylization inference graph."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def conv_bn(scope: str, kh: int, kw: int, cin: int, cout: int) -> dict[str, np.ndarray]:
        return {
            f"{scope}/weights": normal(kh, kw, cin, cout),
            f"{scope}/BatchNorm/beta": normal(cout),
            f"{scope}/BatchNorm/moving_mean": normal(cout),
            f"{scope}/BatchNorm/moving_variance": rng.uniform(0.5, 1.5, cout).astype(np.float32),
        }

    out: dict[str, np.ndarray] = {}
    for spec in _slim_inception_convs():
        out.update(conv_bn(*spec))
    out["Conv/weights"] = normal(1, 1, 768, 100)  # style bottleneck
    out["Conv/biases"] = normal(100)
    for i, (k, cin, cout) in enumerate(((9, 3, 32), (3, 32, 64), (3, 64, 128)), start=1):
        out.update(conv_bn(f"transformer/contract/conv{i}", k, k, cin, cout))
    for r in range(1, 6):
        for j in (1, 2):
            out[f"transformer/residual/residual{r}/conv{j}/weights"] = normal(3, 3, 128, 128)
    for i, (k, cin, cout) in enumerate(((3, 128, 64), (3, 64, 32), (9, 32, 3)), start=1):
        out[f"transformer/expand/conv{i}/conv/weights"] = normal(k, k, cin, cout)
    depths = [128] * 10 + [64, 32, 3]  # nza_model.style_normalization_activations
    for scope, depth in zip(MAGENTA_STYLE_NORM_SCOPES, depths):
        for conv in ("Conv", "Conv_1"):  # beta, then gamma
            prefix = f"style_params/transformer/{scope}/StyleNorm/{conv}"
            out[f"{prefix}/weights"] = normal(1, 1, 100, depth)
            out[f"{prefix}/biases"] = normal(depth)
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return build_stylizer(StylizerConfig()).state_dict()


@pytest.fixture(scope="module")
def variables() -> dict[str, np.ndarray]:
    return magenta_variables()


@pytest.fixture(scope="module")
def converted(variables, reference) -> Stylizer:
    state = sc.convert_magenta(variables, reference)
    model = build_stylizer(StylizerConfig(seed=1))
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- numpy references of TF ops


def _tf_conv_nhwc(x: np.ndarray, kernel: np.ndarray, stride: int, padding: str) -> np.ndarray:
    """tf.nn.conv2d on NHWC / HWIO with 'VALID', 'SAME' (stride 1) or 'REFLECT' (Magenta's pad + VALID)."""
    kh, kw = kernel.shape[:2]
    pads = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
    if padding == "SAME":
        x = np.pad(x, pads)
    elif padding == "REFLECT":
        x = np.pad(x, pads, mode="reflect")  # tf.pad(mode='REFLECT') == numpy's 'reflect'
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, kernel.shape[3]), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
            out += patch @ kernel[i, j]
    return out


def _torch_conv_nhwc(conv: torch.nn.Conv2d, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = conv(torch.from_numpy(x.transpose(0, 3, 1, 2)).float())
    return y.numpy().transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------- tests


def test_every_parameter_maps_to_one_magenta_variable(variables, reference) -> None:
    sources = sc.magenta_variable_map(reference)
    names = [s.tf_name for s in sources.values() if s.tf_name is not None]
    assert len(names) == len(set(names)), "two parameters read the same TF variable"
    assert set(names) == set(variables), "the mapping and Magenta's variable list differ"


def test_converted_weights_load_strict_and_keep_values(converted, variables) -> None:
    state = converted.state_dict()
    name = "InceptionV3/Mixed_6e/Branch_2/Conv2d_0b_7x1/weights"
    np.testing.assert_array_equal(
        state["predictor.trunk.Mixed_6e.branch7x7dbl_2.conv.weight"].numpy(), variables[name].transpose(3, 2, 0, 1)
    )
    assert torch.all(state["predictor.trunk.Mixed_6e.branch7x7dbl_2.bn.weight"] == 1)  # slim BN: no gamma
    scope = "style_params/transformer/residual/residual3/conv2/StyleNorm"
    norm = converted.transformer.residual["residual3"].norm2
    z = np.random.default_rng(1).standard_normal((2, 100)).astype(np.float32)
    with torch.no_grad():
        gamma, beta = norm.gamma(torch.from_numpy(z)).numpy(), norm.beta(torch.from_numpy(z)).numpy()
    # slim.conv2d on the [B, 1, 1, 100] bottleneck == z @ W[0, 0] + b; Conv is beta, Conv_1 gamma.
    np.testing.assert_allclose(gamma, z @ variables[f"{scope}/Conv_1/weights"][0, 0] + variables[f"{scope}/Conv_1/biases"], rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(beta, z @ variables[f"{scope}/Conv/weights"][0, 0] + variables[f"{scope}/Conv/biases"], rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(
        state["transformer.contract.conv2.bn.running_var"].numpy(),
        variables["transformer/contract/conv2/BatchNorm/moving_variance"],
    )


@pytest.mark.parametrize(
    ("module", "tf_name", "stride", "padding"),
    [
        ("transformer.contract.conv2", "transformer/contract/conv2/weights", 2, "REFLECT"),
        ("transformer.contract.conv1", "transformer/contract/conv1/weights", 1, "REFLECT"),
        ("predictor.trunk.Conv2d_1a_3x3", "InceptionV3/Conv2d_1a_3x3/weights", 2, "VALID"),
        ("predictor.trunk.Mixed_6b.branch7x7_2", "InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights", 1, "SAME"),
    ],
)
def test_conv_matches_tf_layout_reference(converted, variables, module, tf_name, stride, padding) -> None:
    """HWIO -> OIHW and the padding convention: the PyTorch conv equals TF's conv on the TF kernel."""
    kernel = variables[tf_name]
    layer = converted.get_submodule(module).conv
    x = np.random.default_rng(2).random((2, 13, 11, kernel.shape[2])).astype(np.float32)
    np.testing.assert_allclose(
        _torch_conv_nhwc(layer, x), _tf_conv_nhwc(x, kernel, stride, padding), rtol=1e-4, atol=1e-4
    )


def test_training_checkpoint_extras_are_ignored(variables, reference) -> None:
    extras = {
        "global_step": np.array(3, dtype=np.int64),
        "vgg_16/conv1/conv1_1/weights": np.zeros((3, 3, 3, 64), np.float32),
        "transformer/contract/conv1/weights/Adam": np.zeros((9, 9, 3, 32), np.float32),
        "beta1_power": np.array(0.9, dtype=np.float32),
    }
    state = sc.convert_magenta({**variables, **extras}, reference)
    assert set(state) == set(reference)


def test_missing_unexpected_and_misshaped_variables_are_all_named(variables, reference) -> None:
    broken = dict(variables)
    del broken["InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights"]
    del broken["style_params/transformer/expand/conv3/conv/StyleNorm/Conv_1/biases"]
    broken["transformer/residual/residual2/conv1/weights"] = np.zeros((3, 3, 128, 64), np.float32)
    broken["transformer/residual/residual6/conv1/weights"] = np.zeros((3, 3, 128, 128), np.float32)
    with pytest.raises(sc.ConversionError) as info:
        sc.convert_magenta(broken, reference)
    msg = str(info.value)
    assert "2 missing" in msg and "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights" in msg
    assert "style_params/transformer/expand/conv3/conv/StyleNorm/Conv_1/biases" in msg
    assert "1 unexpected" in msg and "transformer/residual/residual6/conv1/weights" in msg
    assert "1 mis-shaped" in msg
    assert "transformer/residual/residual2/conv1/weights: checkpoint [3, 3, 128, 64], expected [3, 3, 128, 128]" in msg


def test_tiny_stylizer_has_no_magenta_counterpart() -> None:
    tiny = build_stylizer(StylizerConfig(tiny=True)).state_dict()
    with pytest.raises(sc.ConversionError, match="no Magenta counterpart"):
        sc.magenta_variable_map(tiny)


def _fake_archive(tmp_path: Path) -> Path:
    """The released archive's layout (arbitrary_style_transfer/model.ckpt.*) with placeholder bytes."""
    src = tmp_path / "src" / "arbitrary_style_transfer"
    src.mkdir(parents=True)
    for suffix in (".index", ".data-00000-of-00001"):
        (src / f"model.ckpt{suffix}").write_bytes(b"x")
    archive = tmp_path / "arbitrary_style_transfer.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="arbitrary_style_transfer")
    return archive


def test_resolve_checkpoint_downloads_caches_and_extracts_the_archive(tmp_path, monkeypatch) -> None:
    from sslaug.data import sources

    archive = _fake_archive(tmp_path)
    calls = []

    def fake_download(url: str, dest_dir: Path, filename: str) -> None:
        calls.append(url)
        shutil.copy(archive, Path(dest_dir) / filename)

    monkeypatch.setattr(sources, "_download", fake_download)
    for attempt in range(2):
        work = tmp_path / f"work{attempt}"
        prefix, provenance = sc.resolve_checkpoint(sc.MAGENTA_URL, tmp_path / "downloads", work)
        assert prefix == work / "arbitrary_style_transfer" / "model.ckpt"
        assert provenance["url"] == sc.MAGENTA_URL and len(provenance["archive_sha256"]) == 64
    assert calls == [sc.MAGENTA_URL], "the cached archive is downloaded once"


def test_find_checkpoint_prefix_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(sc.ConversionError, match=str(tmp_path / "nothing")):
        sc.find_checkpoint_prefix(tmp_path / "nothing")
    (tmp_path / "a.index").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.index").write_bytes(b"")
    with pytest.raises(sc.ConversionError, match="several checkpoints"):
        sc.find_checkpoint_prefix(tmp_path)
    assert sc.find_checkpoint_prefix(tmp_path / "a") == tmp_path / "a"


def test_cli_without_tensorflow_fails_clearly(tmp_path, monkeypatch) -> None:
    """The project's own venv has no tensorflow: the CLI says so and writes nothing."""
    if _has_tensorflow(sys.executable):
        pytest.skip("tensorflow is installed in this interpreter")
    archive = _fake_archive(tmp_path)
    out = tmp_path / "w.pt"
    assert sc.main(["--checkpoint", str(archive), "--out", str(out)]) == 2
    assert not out.exists()


# --------------------------------------------------------------------------- end to end with TensorFlow


def _env_pin(env_file: Path, package: str) -> str:
    """The pinned ``package==version`` of a conda env file's pip section."""
    env = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return next(req for req in pip if req.startswith(f"{package}=="))


#: tensorflow as the convert rule's env pins it; the venv is cached across test runs.
TF_REQUIREMENT = _env_pin(REPO / "envs" / "magenta_convert.yaml", "tensorflow-cpu")
_TF_CACHE = Path.home() / ".cache" / "sslaug" / f"tf-venv-{TF_REQUIREMENT.partition('==')[2]}"
TF_VENV = Path(os.environ.get("SSLAUG_TF_VENV", _TF_CACHE))

_WRITE_CHECKPOINT = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    data = np.load(sys.argv[1])
    with tf.Graph().as_default():
        # Magenta trained with TF1 slim + Saver: the same V2 checkpoint bundle and names.
        var_list = {name: tf.compat.v1.Variable(data[name], name="v%d" % i) for i, name in enumerate(data.files)}
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, sys.argv[2])
    """
)


def _has_tensorflow(python: str | Path) -> bool:
    return subprocess.run([str(python), "-c", "import tensorflow"], check=False, capture_output=True).returncode == 0


def _tf_python() -> Path:
    """A cached venv with tensorflow-cpu that also sees this venv's packages (torch, sslaug), else skip."""
    python = TF_VENV / "bin" / "python"
    if python.is_file() and _has_tensorflow(python):
        return python
    import site
    import venv

    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(TF_VENV)
        # Reuse this interpreter's torch / torchvision / sslaug instead of reinstalling ~5 GB.
        parent = [p for p in site.getsitepackages() if Path(p).is_dir()]
        child = next((TF_VENV / "lib").glob("python*/site-packages"))
        (child / "zz_sslaug_parent.pth").write_text("\n".join(parent) + "\n")
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", TF_REQUIREMENT],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError, StopIteration) as err:
        pytest.skip(f"cannot create the tensorflow venv {TF_VENV}: {err}; end-to-end conversion not covered")
    if pip.returncode != 0 or not _has_tensorflow(python):
        pytest.skip(f"cannot install {TF_REQUIREMENT} into {TF_VENV} (no registry?): {pip.stderr[-500:]}")
    return python


@pytest.mark.slow
def test_cli_converts_a_real_tf_checkpoint(tmp_path, variables, converted) -> None:
    """Write a TF1 Saver checkpoint with Magenta's names (plus training extras), pack it as the
    released archive, run the CLI under tensorflow, and load the output as load_stylizer does."""
    python = _tf_python()
    extras = {"global_step": np.array(7, dtype=np.int64), "vgg_16/conv1/conv1_1/weights": np.ones((3, 3, 3, 4), np.float32)}  # fmt: skip
    np.savez(tmp_path / "vars.npz", **variables, **extras)
    ckpt_dir = tmp_path / "src" / "arbitrary_style_transfer"
    ckpt_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([str(python), "-c", _WRITE_CHECKPOINT, str(tmp_path / "vars.npz"), str(ckpt_dir / "model.ckpt")],
                   check=True, env=env, timeout=300)  # fmt: skip
    archive = tmp_path / "arbitrary_style_transfer.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ckpt_dir, arcname="arbitrary_style_transfer")
    out = tmp_path / "resources" / "magenta.pt"
    proc = subprocess.run(
        [str(python), "-m", "sslaug.augment.stylizer_convert", "--checkpoint", str(archive), "--out", str(out)],
        check=False, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from sslaug.augment.stylizer import load_stylizer

    model = load_stylizer(out)
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    saved = torch.load(out, weights_only=True)
    assert saved["source"]["checkpoint"] == str(archive) and len(saved["source"]["archive_sha256"]) == 64
    # A checkpoint missing a variable: a clear error naming it, and the good file stays as it was.
    broken = {k: v for k, v in variables.items() if k != "Conv/biases"}
    np.savez(tmp_path / "broken.npz", **broken)
    subprocess.run([str(python), "-c", _WRITE_CHECKPOINT, str(tmp_path / "broken.npz"), str(tmp_path / "broken.ckpt")],
                   check=True, env=env, timeout=300)  # fmt: skip
    before = out.read_bytes()
    proc = subprocess.run(
        [str(python), "-m", "sslaug.augment.stylizer_convert", "--checkpoint", str(tmp_path / "broken.ckpt"), "--out", str(out)],
        check=False, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2 and "1 missing" in proc.stderr and "Conv/biases" in proc.stderr, proc.stderr[-2000:]
    assert out.read_bytes() == before


def test_inception_pooling_leaves_padding_out_like_tf(converted) -> None:
    """slim's avg_pool2d(SAME) averages in-image pixels only; the branch_pool channels must see that."""
    block = converted.predictor.trunk.Mixed_5b
    x = torch.rand(1, 192, 5, 6)
    padded = F.pad(x, (1, 1, 1, 1))
    counts = F.pad(torch.ones(1, 1, 5, 6), (1, 1, 1, 1))
    tf_pool = F.avg_pool2d(padded, 3, 1) * 9 / (F.avg_pool2d(counts, 3, 1) * 9)  # sum / in-image count
    with torch.no_grad():
        expected = block.branch_pool(tf_pool)
        got = block(x)[:, -expected.shape[1] :]
    torch.testing.assert_close(got, expected)

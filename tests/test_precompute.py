"""Fast tests of the precompute steps: SASSL stylizer, style features, generative-view shards.

Everything is built from configs with random weights (no downloads); the whole file
runs in well under 30 s on 2 CPU cores.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers / transformers are imported

import numpy as np
import pytest
import torch

from sslaug.augment import generative_views as gv
from sslaug.augment import style_features as sf
from sslaug.augment.stylizer import (
    MAGENTA_STYLE_NORM_SCOPES,
    Stylizer,
    StylizerConfig,
    build_stylizer,
    load_stylizer,
)
from sslaug.data.formats import ArrayDataset, write_array_dataset
from sslaug.io import sha256sum

TINY = StylizerConfig(tiny=True)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine torch's 2 spinning OpenMP threads
    make these tiny models 40x slower whenever another process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_array_set(directory: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """A prepared array-format dataset with ``n`` random uint8 images in split ``train``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    directory.mkdir(parents=True)
    write_array_dataset(directory, ArrayDataset("toy", ["a"], {"train": (images, labels)}), source="test")
    return directory


@pytest.fixture(scope="module")
def tiny_stylizer() -> Stylizer:
    return load_stylizer(None, TINY)


@pytest.fixture()
def content() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- stylizer


def test_tiny_stylizer_shapes_and_range(tiny_stylizer: Stylizer, content: torch.Tensor) -> None:
    z = tiny_stylizer.embed_style(content)
    assert z.shape == (4, 100)
    out = tiny_stylizer.stylize(content, z.flip(0), alpha=0.3, beta=0.7)
    assert out.shape == content.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.equal(out, content)


def test_full_stylizer_has_magenta_layer_shapes() -> None:
    # style_input_size=80 instead of Magenta's 256 keeps InceptionV3 cheap here (>= 75 px needed)
    model = build_stylizer(StylizerConfig(style_input_size=80))
    t = model.transformer
    assert t.contract["conv1"].conv.weight.shape == (32, 3, 9, 9)
    assert t.contract["conv3"].conv.weight.shape == (128, 64, 3, 3)
    assert t.expand["conv3"].conv.weight.shape == (3, 32, 9, 9)
    depths = [norm.gamma.out_features for norm in t.style_norms()]
    assert len(depths) == len(MAGENTA_STYLE_NORM_SCOPES) == 13
    assert depths == [128] * 10 + [64, 32, 3]
    assert all(norm.beta.in_features == 100 for norm in t.style_norms())
    assert model.predictor.bottleneck.weight.shape == (100, 768, 1, 1)
    assert list(model.predictor.trunk.named_children())[-1][0] == "Mixed_6e"
    with torch.inference_mode():
        x = torch.rand(1, 3, 48, 48)
        z = model.eval().embed_style(x)  # resized to 80 inside
        out = model.stylize(x, z, 0.5, 1.0)
    assert z.shape == (1, 100) and out.shape == x.shape
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_beta_zero_returns_content_exactly(tiny_stylizer: Stylizer, content: torch.Tensor) -> None:
    z_s = torch.randn(4, 100)
    assert torch.equal(tiny_stylizer.stylize(content, z_s, alpha=0.8, beta=0.0), content)
    # per-sample factors: only the rows with beta = 0 are untouched
    out = tiny_stylizer.stylize(content, z_s, alpha=torch.full((4,), 0.5), beta=torch.tensor([0.0, 1.0, 0.0, 0.5]))
    assert torch.equal(out[0], content[0]) and torch.equal(out[2], content[2])
    assert not torch.equal(out[1], content[1])


def test_alpha_zero_uses_only_content_embedding(tiny_stylizer: Stylizer, content: torch.Tensor) -> None:
    a = tiny_stylizer.stylize(content, torch.randn(4, 100), alpha=0.0, beta=1.0)
    b = tiny_stylizer.stylize(content, 10 * torch.randn(4, 100), alpha=0.0, beta=1.0)
    assert torch.equal(a, b)
    c = tiny_stylizer.stylize(content, 10 * torch.randn(4, 100), alpha=0.5, beta=1.0)
    assert not torch.allclose(a, c)


def test_alpha_one_uses_only_style_embedding(tiny_stylizer: Stylizer, content: torch.Tensor) -> None:
    z_s = torch.randn(4, 100)
    expected = tiny_stylizer.transformer(content, z_s)
    torch.testing.assert_close(tiny_stylizer.stylize(content, z_s, alpha=1.0, beta=1.0), expected)


def test_load_stylizer_roundtrip_and_random_warning(tmp_path: Path, content: torch.Tensor, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        a = load_stylizer(None, StylizerConfig(tiny=True, seed=3))
    assert "RANDOMLY" in caplog.text
    path = tmp_path / "stylizer.pt"
    torch.save({"state_dict": a.state_dict()}, path)
    b = load_stylizer(path, StylizerConfig(tiny=True, seed=99))
    z = torch.randn(4, 100)
    assert torch.equal(a.stylize(content, z, 0.2, 0.3), b.stylize(content, z, 0.2, 0.3))
    with pytest.raises(ValueError, match="unknown StylizerConfig keys"):
        StylizerConfig.from_dict({"tinyy": True})


# --------------------------------------------------------------------------- style features


def test_style_features_cli(tmp_path: Path, tiny_stylizer: Stylizer) -> None:
    styles = make_array_set(tmp_path / "styles", 6)
    out = tmp_path / "features.pt"
    argv = ["--styles", str(styles), "--stylizer", "random", "--config", '{"tiny": true}',
            "--batch-size", "4", "--out", str(out)]  # fmt: skip
    assert sf.main(argv) == 0
    feats = torch.load(out, weights_only=True)
    assert feats["embeddings"].shape == (6, 100) and feats["embeddings"].dtype == torch.float16
    assert feats["count"] == 6 and feats["source"] == str(styles) and feats["stylizer"] == "random"
    assert feats["sha256_of_images"] == sha256sum(styles / "train_images.npy")
    images = torch.from_numpy(np.load(styles / "train_images.npy")).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        expected = tiny_stylizer.embed_style(images)
    torch.testing.assert_close(feats["embeddings"].float(), expected, atol=1e-2, rtol=1e-2)


def test_style_features_empty_set_fails_and_writes_nothing(tmp_path: Path, capsys) -> None:
    styles = make_array_set(tmp_path / "empty_styles", 0)
    out = tmp_path / "features.pt"
    argv = ["--styles", str(styles), "--stylizer", "random", "--config", '{"tiny": true}', "--out", str(out)]
    assert sf.main(argv) == 2
    assert not out.exists() and list(tmp_path.glob(".features.pt*")) == []
    assert str(styles) in capsys.readouterr().err
    with pytest.raises(sf.StyleSetError, match=str(styles)):
        sf.compute_style_features(styles, "random", TINY)


# --------------------------------------------------------------------------- generative views


def test_shard_ranges_cover_all_indices() -> None:
    ranges = [gv.shard_range(10, i, 3) for i in range(3)]
    assert ranges == [(0, 3), (3, 6), (6, 10)]
    assert gv.view_seed(0, 1, 2) != gv.view_seed(0, 2, 1)


@pytest.fixture(scope="module")
def view_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_array_set(tmp_path_factory.mktemp("views") / "data", 5, size=32, seed=1)


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--split", "train", "--generator", "unclip", "--model", "tiny-random",
            "--views", "2", "--shard", "1", "--num-shards", "2", "--image-size", "32", "--steps", "2",
            "--out", str(out), *extra]  # fmt: skip


def test_generative_views_shard(view_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "shard1"
    assert gv.main(_args(view_data, out)) == 0
    views = np.load(out / "views.npy")
    assert views.shape == (3, 2, 32, 32, 3) and views.dtype == np.uint8  # shard 1 of 2 over 5 images
    assert not np.array_equal(views[:, 0], views[:, 1])  # views differ (own seeds)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shard"] == 1 and manifest["num_shards"] == 2 and manifest["indices"] == [2, 5]
    assert manifest["views"] == 2 and manifest["sha256"]["views.npy"] == sha256sum(out / "views.npy")
    gen = manifest["generator"]
    assert gen["name"] == "unclip" and gen["model"] == "tiny-random" and gen["guidance_scale"] == 10.0
    assert gen["scheduler"] == {"class": "DDIMScheduler", "rescale_betas_zero_snr": True,
                                "timestep_spacing": "trailing", "prediction_type": "v_prediction"}  # fmt: skip
    assert gen["eta"] == 0.0 and gen["noise_level"] == 0 and gen["num_inference_steps"] == 2
    assert not (tmp_path / "shard1.partial").exists()
    assert gv.main(["--verify", str(out)]) == 0


def test_generative_views_resume_after_interruption(view_data: Path, tmp_path: Path) -> None:
    config = gv.ViewConfig(views=2, image_size=32, num_inference_steps=2)
    out = tmp_path / "shard"

    class Interrupted(Exception):
        pass

    def stop(start: int, end: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        gv.generate_shard(view_data, "train", config, 1, 2, out, chunk_size=1, on_chunk_done=stop)
    work = tmp_path / "shard.partial"
    assert not out.exists()
    assert sorted(p.name for p in work.glob("views_*.npy")) == ["views_000000002.npy"]
    first_chunk = (work / "views_000000002.npy").read_bytes()

    result = gv.generate_shard(view_data, "train", config, 1, 2, out, chunk_size=1)
    assert result["reused"] == [2] and result["generated"] == [3, 4]
    assert not work.exists()
    resumed = np.load(out / "views.npy")
    assert np.array_equal(resumed[:1], np.load(io.BytesIO(first_chunk)))  # reused as is

    fresh = tmp_path / "fresh"
    gv.generate_shard(view_data, "train", config, 1, 2, fresh, chunk_size=1)
    assert np.array_equal(resumed, np.load(fresh / "views.npy"))  # resuming changes nothing

    again = gv.generate_shard(view_data, "train", config, 1, 2, out, chunk_size=1)
    assert again["generated"] == [] and again["reused"] == []  # complete shard: no work


def test_verify_shard_detects_corruption(view_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "shard0"
    gv.generate_shard(view_data, "train", gv.ViewConfig(views=1, image_size=32, num_inference_steps=2), 0, 3, out)
    gv.verify_shard(out)
    path = out / "views.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(gv.ShardError, match="views.npy"):
        gv.verify_shard(out)
    assert gv.main(["--verify", str(out)]) == 2
    (out / "manifest.json").unlink()
    with pytest.raises(gv.ShardError, match="manifest.json"):
        gv.verify_shard(out)


def test_icgan_without_its_code_is_not_faked(view_data: Path, tmp_path: Path, capsys) -> None:
    """Real ICGAN weights without the user's ic_gan checkout: a clear error, no file (tests/test_icgan_views.py)."""
    out = tmp_path / "icgan"
    args = _args(view_data, out)[:4] + ["--generator", "icgan", "--model", str(tmp_path / "weights"), "--out", str(out)]
    assert gv.main(args) == 2
    assert "generative.icgan.code" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "icgan.partial").exists()

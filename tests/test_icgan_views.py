"""ICGAN generative views: the same shard format and resume as unCLIP, the ic_gan glue.

The ic_gan code itself (CC-BY-NC, not on PyPI) and its weights cannot be had here:
``tests/fake_ic_gan`` is a TEST DOUBLE with ic_gan's two entry points and call signatures,
copied into a git repository so the commit pin is checked as with a real checkout.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_precompute import make_array_set

from sslaug.augment import generative_views as gv
from sslaug.augment import icgan_views as iv
from sslaug.augment.generative import GeneratedViewBank
from sslaug.data.formats import DataError

FAKE_IC_GAN = Path(__file__).parent / "fake_ic_gan"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_array_set(tmp_path_factory.mktemp("icgan") / "data", 5, size=32, seed=2)


def _args(data: Path, out: Path, shard: int = 1, *extra: str) -> list[str]:
    return ["--data", str(data), "--generator", "icgan", "--model", "tiny-random", "--views", "2",
            "--shard", str(shard), "--num-shards", "2", "--image-size", "32", "--out", str(out), *extra]  # fmt: skip


def test_tiny_icgan_shard_has_the_unclip_format_and_the_loader_reads_it(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "icgan" / "data"
    for shard in (0, 1):
        assert gv.main(_args(data, root / f"shard{shard}", shard)) == 0
    manifest = gv.verify_shard(root / "shard1")
    assert manifest["indices"] == [2, 5] and manifest["views"] == 2
    gen = manifest["generator"]
    assert gen["name"] == "icgan" and gen["model"] == "tiny-random" and "CC-BY-NC" in gen["licence"]
    assert gen["truncation"] == 0.7 and manifest["fingerprint"]["icgan"]["truncation"] == 0.7
    views = np.load(root / "shard1" / "views.npy")
    assert views.shape == (3, 2, 32, 32, 3) and not np.array_equal(views[:, 0], views[:, 1])
    bank = GeneratedViewBank(root, 5)  # what pretraining reads, for unCLIP and ICGAN alike
    got = bank.lookup(np.array([3]), np.array([1]))
    assert torch.equal(got[0], torch.from_numpy(views[1, 1]).permute(2, 0, 1))


def test_icgan_resume_reuses_chunks_and_changes_nothing(data: Path, tmp_path: Path) -> None:
    config = gv.ViewConfig(generator="icgan", views=2, image_size=32)
    out = tmp_path / "shard"

    class Interrupted(Exception):
        pass

    def stop(start: int, end: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        gv.generate_shard(data, "train", config, 1, 2, out, chunk_size=1, on_chunk_done=stop)
    first = (tmp_path / "shard.partial" / "views_000000002.npy").read_bytes()
    result = gv.generate_shard(data, "train", config, 1, 2, out, chunk_size=1)
    assert result["reused"] == [2] and result["generated"] == [3, 4]
    resumed = np.load(out / "views.npy")
    assert np.array_equal(resumed[:1], np.load(io.BytesIO(first)))
    fresh = tmp_path / "fresh"
    gv.generate_shard(data, "train", config, 1, 2, fresh, chunk_size=3)
    assert np.array_equal(resumed, np.load(fresh / "views.npy"))  # chunking does not change views
    gv.generate_shard(data, "train", config, 1, 2, tmp_path / "t05", icgan=iv.IcganSettings(truncation=0.5))
    assert not np.array_equal(resumed, np.load(tmp_path / "t05" / "views.npy"))


def test_truncated_noise_is_seeded_and_bounded() -> None:
    z = iv.truncated_noise(10_000, 0.7, seed=3)
    assert z.abs().max() <= 1.4 and z.std() > 0.5
    assert torch.equal(z, iv.truncated_noise(10_000, 0.7, seed=3))


@pytest.fixture()
def checkout(tmp_path: Path) -> tuple[Path, str]:
    """The test double as a git checkout, and its commit."""
    code = tmp_path / "ic_gan"
    shutil.copytree(FAKE_IC_GAN, code)
    git = ["git", "-C", str(code), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(code)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fake"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    yield code, head
    for name in ("inference", "inference.utils", "data_utils", "data_utils.utils"):
        sys.modules.pop(name, None)
    if str(code.resolve()) in sys.path:
        sys.path.remove(str(code.resolve()))


def _weights(tmp_path: Path) -> tuple[Path, Path]:
    experiment = tmp_path / "weights" / iv.ICGAN_EXPERIMENT
    experiment.mkdir(parents=True)
    torch.save({"config": {"dim_z": 128, "resolution": 16}, "best_FID": 1.0}, experiment / "state_dict_best0.pth")
    swav = tmp_path / "weights" / "swav_pretrained.pth.tar"
    torch.save({}, swav)
    return experiment, swav


def test_real_path_calls_ic_gan_code_as_the_authors(data: Path, tmp_path: Path, checkout) -> None:
    code, head = checkout
    experiment, swav = _weights(tmp_path)
    out = tmp_path / "shard"
    args = ["--data", str(data), "--generator", "icgan", "--model", str(experiment), "--views", "2",
            "--image-size", "32", "--out", str(out), "--icgan-code", str(code), "--icgan-commit", head,
            "--swav", str(swav), "--batch-size", "4"]  # fmt: skip
    assert gv.main(args) == 0
    calls = sys.modules["inference.utils"].CALLS
    config = calls[0]["config"]
    assert config["experiment_name"] == iv.ICGAN_EXPERIMENT and config["model_backbone"] == "biggan"
    assert config["weights_root"] == str(experiment.parent)
    gen_calls = calls[1:]
    assert sum(len(c["z"]) for c in gen_calls) == 5 * 2
    for call in gen_calls:
        assert call["y"] is None  # ICGAN, not class-conditional
        assert call["z"].shape[1] == 128 and call["z"].abs().max() <= 1.4
        torch.testing.assert_close(call["feats"].norm(dim=1), torch.ones(len(call["feats"])))
    manifest = gv.verify_shard(out)
    assert manifest["generator"]["commit"] == head and manifest["generator"]["code"] == str(code.resolve())
    assert np.load(out / "views.npy").shape == (5, 2, 32, 32, 3)


def test_wrong_commit_or_missing_checkout_fails_before_writing(data: Path, tmp_path: Path, checkout, capsys) -> None:
    code, _ = checkout
    experiment, swav = _weights(tmp_path)
    out = tmp_path / "shard"
    base = ["--data", str(data), "--generator", "icgan", "--model", str(experiment), "--image-size", "32",
            "--out", str(out), "--swav", str(swav)]  # fmt: skip
    assert gv.main([*base, "--icgan-code", str(code), "--icgan-commit", "0" * 40]) == 2
    assert "the config pins " + "0" * 40 in capsys.readouterr().err
    assert gv.main([*base, "--icgan-code", str(tmp_path / "nowhere")]) == 2
    assert "generative.icgan.code" in capsys.readouterr().err
    with pytest.raises(DataError, match="generative.icgan.swav"):
        iv.check_icgan_inputs(str(experiment), iv.IcganSettings(code=str(code), swav=str(tmp_path / "none")))
    assert not out.exists() and not (tmp_path / "shard.partial").exists()
    assert json.dumps(iv.IcganSettings().to_dict())  # fingerprint-ready

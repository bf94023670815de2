"""Linear probe and kNN on image-folder datasets (ImageNet, iNat, the transfer sets): streamed from disk.

The dataset is prepared by the real preparer from a JPEG tree the tests write: three
classes told apart by colour (red, green, blue tints over a random grey texture), landscape
photos whose shorter side is 256, so the papers' test view (shorter side 256, centre crop
224) is a plain centre crop a test can compute without the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sslaug.augment.views import normalize_uint8
from sslaug.data.formats import read_meta
from sslaug.data.prepare import main as prepare_main
from sslaug.evaluate.common import FolderSplit, open_eval_split, split_features, split_labels
from sslaug.evaluate.knn import main as knn_main
from sslaug.evaluate.linear import main as linear_main
from sslaug.models.backbones import build_backbone, encoder_state, load_encoder

WIDTH, HEIGHT = 288, 256  # shorter side 256: the test view is the centre 224 x 224, no resize
CLASSES = ("red", "green", "blue")
TINTS = {"red": (90, -45, -45), "green": (-45, 90, -45), "blue": (-45, -45, 90)}
PER_CLASS = {"train": 12, "test": 6}
ENCODER_SIZE = 32  # the probes' default view side (the encoder's pretraining size) keeps the CPU runs fast
CPU = torch.device("cpu")


def tinted_photo(colour: str, seed: int) -> np.ndarray:
    """A random grey block texture with the class's colour tint, HEIGHT x WIDTH x 3 uint8."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(60, 196, (HEIGHT // 16, WIDTH // 16), dtype=np.int16).repeat(16, 0).repeat(16, 1)
    image = grey[..., None] + np.array(TINTS[colour], dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared image-folder dataset (train / test splits, three colour classes)."""
    tmp = tmp_path_factory.mktemp("tinted")
    seed = 0
    for split, count in PER_CLASS.items():
        for colour in CLASSES:
            for i in range(count):
                path = tmp / "tree" / split / colour / f"{colour}{i:02d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(tinted_photo(colour, seed)).save(path, format="JPEG", quality=95)
                seed += 1
    out = tmp / "prepared"
    argv = ["--dataset", "imagefolder", "--source", "path", "--root", str(tmp / "tree"), "--out", str(out)]
    assert prepare_main(argv) == 0
    assert read_meta(out)["format"] == "imagefolder"
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny encoder saved as pretraining saves it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    torch.save(encoder_state(build_backbone("tiny"), "tiny", ENCODER_SIZE, {}), path)
    return path


def run_cli(main: Any, encoder: Path, data: Path, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    argv = ["--encoder", str(encoder), "--data", str(data), "--spec", json.dumps(spec), "--out", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text())


def check_metrics(result: dict[str, Any], min_top1: float) -> None:
    metrics = result["metrics"]
    assert result["status"] == "ok"
    for key in ("top1", "top5", "mean_class_acc"):
        assert 0.0 <= metrics[key] <= 100.0, (key, metrics)
    assert metrics["top5"] == 100.0  # three classes: the top 5 hold them all
    assert metrics["top1"] >= min_top1, metrics  # chance is 33.3%


def test_streamed_features_match_a_direct_decode_of_the_test_view(photos: Path, encoder: Path) -> None:
    """The streaming extractor = encoder(normalise(centre 224 of the 256-side photo)), in index order."""
    model, _ = load_encoder(encoder)
    split = open_eval_split(photos, "test", 224, num_workers=0)
    assert isinstance(split, FolderSplit)
    feats = split_features(model, split, CPU)
    assert feats.shape == (len(CLASSES) * PER_CLASS["test"], model.feature_dim) and feats.dtype == torch.float32
    root = Path(read_meta(photos)["root"])
    index = (photos / "test_index.csv").read_text().splitlines()[1:]
    top, left = (HEIGHT - 224) // 2, (WIDTH - 224) // 2
    for row in (0, 7, len(index) - 1):
        relpath, label = index[row].rsplit(",", 1)
        with Image.open(root / relpath) as im:
            pixels = np.asarray(im.convert("RGB"))[top : top + 224, left : left + 224]
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]
        with torch.no_grad():
            expected = model(normalize_uint8(image))[0]
        torch.testing.assert_close(feats[row], expected, rtol=1e-4, atol=1e-5)
        assert split_labels(split)[row] == int(label)
    half = split_features(model, split, CPU, torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), feats, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("spec", "min_top1"),
    [
        ({"solver": "ridge", "augment": False, "ridge_lambda": 1.0, "num_workers": 0}, 80.0),
        ({"solver": "logistic", "augment": False, "logistic_lambdas": [1e-4, 1e1, 4], "num_workers": 1}, 80.0),
        # A MoCo-style recipe, shortened: crops of the full photos every epoch through the frozen encoder.
        (
            {"solver": "sgd", "augment": True, "epochs": 8, "batch_size": 12, "lr": 1.0, "num_workers": 0},
            60.0,
        ),
        # Mean Shift's recipe shape: L2 + train-set standardisation, features stored as float16, one worker.
        (
            {
                "augment": True,
                "epochs": 8,
                "batch_size": 12,
                "lr": 0.5,
                "l2_normalize": True,
                "standardize": True,
                "feature_dtype": "float16",
                "num_workers": 1,
            },
            60.0,
        ),
    ],
    ids=["ridge", "logistic", "sgd-augment", "sgd-augment-standardize-fp16"],
)
def test_linear_cli_on_an_image_folder_learns_the_colours(
    tmp_path: Path, photos: Path, encoder: Path, spec: dict[str, Any], min_top1: float
) -> None:
    result = run_cli(linear_main, encoder, photos, spec, tmp_path / "metrics.json")
    check_metrics(result, min_top1)
    assert result["info"]["train_images"] == len(CLASSES) * PER_CLASS["train"]
    assert result["info"]["image_size"] == ENCODER_SIZE
    if spec.get("solver", "sgd") == "sgd":
        assert result["info"]["steps"] == spec["epochs"] * 3  # 36 images in batches of 12


def test_augmented_probe_is_reproducible_from_the_seed(tmp_path: Path, photos: Path, encoder: Path) -> None:
    spec = {"augment": True, "epochs": 2, "batch_size": 12, "lr": 1.0, "num_workers": 0}
    first = run_cli(linear_main, encoder, photos, spec, tmp_path / "a.json")["metrics"]
    again = run_cli(linear_main, encoder, photos, spec, tmp_path / "b.json")["metrics"]
    assert first == again


def test_knn_cli_on_an_image_folder(tmp_path: Path, photos: Path, encoder: Path) -> None:
    result = run_cli(knn_main, encoder, photos, {"k": 5, "num_workers": 0}, tmp_path / "knn.json")
    check_metrics(result, 80.0)


def test_unknown_feature_dtype_is_a_one_line_error(tmp_path: Path, photos: Path, encoder: Path, capsys) -> None:
    out = tmp_path / "metrics.json"
    argv = ["--encoder", str(encoder), "--data", str(photos), "--spec", '{"feature_dtype": "int8"}', "--out", str(out)]
    assert linear_main(argv) == 1
    assert "feature_dtype" in capsys.readouterr().err and not out.exists()

"""SASSL style sets in image-folder format (DTD, PBN, ImageNet, ...) and the ``max_images`` subset.

The style set is a real DTD preparation (``sslaug.data.prepare``, ``--source path``) of a
tiny DTD tree in DTD's own layout (``images/<class>/*.jpg``, ``labels/train1.txt``), so the
embedding reads exactly what ``prepare_dataset`` writes at the cifar and paper scales.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslaug.augment import style_features as sf
from sslaug.augment.stylizer import StylizerConfig, load_stylizer
from sslaug.data import formats, prepare
from sslaug.io import sha256sum

#: Tiny predictor with the image-folder decode size fixed small (the full model's is 256).
TINY_24 = StylizerConfig(tiny=True, style_input_size=24)
TRAIN_FILES = [f"banded/b_{i}.jpg" for i in range(3)] + [f"dotted/d_{i}.jpg" for i in range(2)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: the machine's 2 cores are shared with other test processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_dtd_tree(root: Path) -> Path:
    """A DTD release in its real layout: 5 train JPEGs of different shapes, 1 val, 1 test."""
    base = root / "dtd"
    rng = np.random.default_rng(0)
    files = [*TRAIN_FILES, "banded/b_9.jpg", "dotted/d_9.jpg"]
    for i, rel in enumerate(files):
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        h, w = 30 + 7 * i, 40 + 3 * i  # non-square, so the shorter-side resize and centre crop matter
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "images" / rel, quality=90)
    (base / "labels").mkdir(parents=True)
    (base / "labels" / "train1.txt").write_text("\n".join(TRAIN_FILES) + "\n")
    (base / "labels" / "val1.txt").write_text("banded/b_9.jpg\n")
    (base / "labels" / "test1.txt").write_text("dotted/d_9.jpg\n")
    return root


@pytest.fixture(scope="module")
def dtd_styles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/dtd`` as rule prepare_dataset writes it (imagefolder format, index over the tree)."""
    tmp = tmp_path_factory.mktemp("dtd")
    raw = write_dtd_tree(tmp / "raw")
    out = tmp / "data" / "dtd"
    assert prepare.main(["--dataset", "dtd", "--source", "path", "--root", str(raw), "--out", str(out)]) == 0
    meta = formats.read_meta(out)
    assert meta["format"] == "imagefolder" and meta["splits"]["train"] == len(TRAIN_FILES)
    return out


def expected_embeddings(styles: Path, config: StylizerConfig, size: int) -> torch.Tensor:
    """What the predictor gives each train image decoded by the loaders' own decoder at ``size``."""
    paths, _ = formats.read_imagefolder_index(styles, "train")
    root = Path(formats.read_meta(styles)["root"])
    images = torch.stack([formats.decode_resize_crop(root / p, size) for p in paths]).float() / 255
    with torch.inference_mode():
        return load_stylizer(None, config).embed_style(images)


def run_cli(styles: Path, out: Path, *extra: str) -> int:
    return sf.main(["--styles", str(styles), "--stylizer", "random", "--config", '{"tiny": true, "style_input_size": 24}',
                    "--batch-size", "2", "--out", str(out), *extra])  # fmt: skip


def test_imagefolder_style_set_is_embedded(dtd_styles: Path, tmp_path: Path) -> None:
    out = tmp_path / "dtd.pt"
    assert run_cli(dtd_styles, out) == 0  # batch 2 over 5 images: a last partial batch too
    feats = torch.load(out, weights_only=True)
    assert feats["embeddings"].shape == (5, 100) and feats["embeddings"].dtype == torch.float16
    assert feats["format"] == "imagefolder" and feats["count"] == feats["total_images"] == 5
    assert feats["indices"] is None and feats["decode_size"] == 24
    assert feats["sha256_of_images"] == sha256sum(dtd_styles / "train_index.csv")
    expected = expected_embeddings(dtd_styles, TINY_24, 24)
    torch.testing.assert_close(feats["embeddings"].float(), expected, atol=1e-2, rtol=1e-2)
    assert not torch.allclose(expected[0], expected[1])  # the images differ, so do their styles


def test_loader_workers_give_the_same_embeddings(dtd_styles: Path, tmp_path: Path) -> None:
    in_process = sf.compute_style_features(dtd_styles, "random", TINY_24, batch_size=2)
    workers = sf.compute_style_features(dtd_styles, "random", TINY_24, batch_size=3, num_workers=2)
    assert torch.equal(in_process["embeddings"], workers["embeddings"])


def test_decode_size_is_the_predictors_input_size(dtd_styles: Path) -> None:
    # The full (Magenta) predictor's styles are 256 x 256: shorter side 256, centre crop.
    full = sf.open_style_set(dtd_styles, StylizerConfig().resolved_style_input_size)
    image, _ = full[0]
    assert image.shape == (3, 256, 256) and image.dtype == torch.uint8
    # The tiny predictor does not resize: image-folder styles come at the size of their meta.json.
    tiny = sf.open_style_set(dtd_styles, StylizerConfig(tiny=True).resolved_style_input_size)
    meta_size = formats.read_meta(dtd_styles)["image_size"][0]
    assert tiny[0][0].shape == (3, meta_size, meta_size)


def test_max_images_embeds_a_fixed_seeded_subset(dtd_styles: Path, tmp_path: Path) -> None:
    full = sf.compute_style_features(dtd_styles, "random", TINY_24, batch_size=4)
    first = sf.compute_style_features(dtd_styles, "random", TINY_24, batch_size=4, max_images=3)
    again = sf.compute_style_features(dtd_styles, "random", TINY_24, batch_size=2, max_images=3)
    indices = first["indices"]
    assert first["count"] == 3 and first["total_images"] == 5 and indices.dtype == torch.int64
    assert indices.tolist() == sorted(set(indices.tolist())) and 0 <= int(indices.min()) <= int(indices.max()) < 5
    assert torch.equal(indices, again["indices"])  # the same styles on every run
    torch.testing.assert_close(first["embeddings"], full["embeddings"][indices], atol=1e-3, rtol=1e-3)
    # At or above the set's size, and 0, mean every image.
    assert sf.style_subset(5, 5) is None and sf.style_subset(5, 0) is None and sf.style_subset(5, None) is None
    assert len(sf.style_subset(1_000_000, 10)) == 10
    with pytest.raises(ValueError, match="max images"):
        sf.style_subset(5, -1)


def test_array_style_set_subset_through_the_cli(tmp_path: Path) -> None:
    """Array sets (mini's generated styles) still work, with the subset too."""
    styles = tmp_path / "styles"
    styles.mkdir()
    images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    formats.write_array_dataset(
        styles, formats.ArrayDataset("toy", [], {"train": (images, np.full(6, -1))}), source="test"
    )
    out = tmp_path / "styles.pt"
    argv = ["--styles", str(styles), "--stylizer", "random", "--config", '{"tiny": true}', "--max-images", "4",
            "--workers", "2", "--out", str(out)]  # fmt: skip
    assert sf.main(argv) == 0
    feats = torch.load(out, weights_only=True)
    assert feats["format"] == "array" and feats["count"] == 4 and feats["total_images"] == 6
    assert feats["decode_size"] is None and feats["sha256_of_images"] == sha256sum(styles / "train_images.npy")
    x = torch.from_numpy(images[feats["indices"].numpy()]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        expected = load_stylizer(None, StylizerConfig(tiny=True)).embed_style(x)
    torch.testing.assert_close(feats["embeddings"].float(), expected, atol=1e-2, rtol=1e-2)


def test_corrupt_style_image_is_named_and_nothing_written(
    dtd_styles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy of the prepared set whose root holds one file broken after preparation.
    raw = write_dtd_tree(tmp_path / "raw")
    out_dir = tmp_path / "data" / "dtd"
    assert prepare.main(["--dataset", "dtd", "--source", "path", "--root", str(raw), "--out", str(out_dir)]) == 0
    broken = raw / "dtd" / "images" / TRAIN_FILES[3]
    broken.write_bytes(b"not a jpeg")
    capsys.readouterr()
    for workers in ("0", "2"):  # in-process and in DataLoader workers alike
        out = tmp_path / f"features{workers}.pt"
        assert run_cli(out_dir, out, "--workers", workers) == 2
        err = capsys.readouterr().err
        assert "corrupt image file" in err and str(broken) in err and "nothing written" in err
        assert not out.exists() and list(tmp_path.glob(f".{out.name}*")) == []


def test_style_set_in_a_format_without_images_is_refused(tmp_path: Path) -> None:
    coco = tmp_path / "voc07"
    coco.mkdir()
    formats.write_meta(coco, {"format": "coco", "splits": {"train": 3}})
    with pytest.raises(sf.StyleSetError, match=rf"{coco}.*'coco'.*'array', 'imagefolder'"):
        sf.open_style_set(coco)
    nosplit = tmp_path / "nosplit"
    nosplit.mkdir()
    formats.write_meta(nosplit, {"format": "imagefolder", "root": str(tmp_path), "splits": {"test": 2}})
    with pytest.raises(sf.StyleSetError, match=rf"{nosplit} has no split 'train' \(has: test\)"):
        sf.open_style_set(nosplit)

"""Tests for sslaug.data: mini generators, real-source preparation on fake archives, loaders.

Fake archives are built here in each source's real layout (CIFAR python pickles,
STL-10 binary, Tiny ImageNet zip, COCO zips, ImageFolder trees); only the network
step is replaced (``sources._download`` copies the local file), checksum
verification stays on with the fake archive's md5 patched into ``SOURCES``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import tarfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.utils import calculate_md5

from sslaug.data import formats, mini, prepare, sources

# --------------------------------------------------------------------------- helpers


def run_prepare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in-process; return (exit status, stderr).

    Every successful real-source preparation is also checked to write the splits that
    ``sources.prepared_splits`` declares, which the scale guard (test_scale_datasets.py)
    relies on to check each scale's split names without preparing anything.
    """
    rc = prepare.main(list(args))
    if rc == 0:
        assert_declared_splits(args)
    return rc, capsys.readouterr().err


def assert_declared_splits(args: Sequence[str]) -> None:
    """The prepared dataset has exactly the declared splits (a generic ImageFolder tree: some of them)."""
    parsed = prepare._parser().parse_args(list(args))
    if parsed.source == "generate":
        return
    options = prepare.parse_options(parsed.option)
    spec = sources.SOURCES[parsed.dataset]
    declared = set(sources.prepared_splits(spec, options))
    written = set(formats.read_meta(Path(parsed.out))["splits"])
    if spec.preparer == "imagefolder" and "splits" not in options:  # whichever of train/val/test exist
        assert written <= declared, f"{parsed.dataset}: wrote splits {sorted(written)}, declared {sorted(declared)}"
    else:
        assert written == declared, f"{parsed.dataset}: wrote splits {sorted(written)}, declared {sorted(declared)}"


def use_fake_archives(monkeypatch: pytest.MonkeyPatch, name: str, archives: dict[str, Path]) -> None:
    """Serve ``archives`` (resource filename -> local file) instead of the network, md5s patched."""
    spec = sources.SOURCES[name]
    resources = tuple(dataclasses.replace(r, md5=calculate_md5(str(archives[r.filename]))) for r in spec.resources)
    monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(spec, resources=resources))
    by_url = {r.url: archives[r.filename] for r in spec.resources}
    monkeypatch.setattr(sources, "_download", lambda url, dest, fname: shutil.copy(by_url[url], Path(dest) / fname))


def tar_dir(src: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    return archive


def zip_dir(src: Path, archive: Path, arc_root: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, str(Path(arc_root) / p.relative_to(src)))
    return archive


def save_jpeg(path: Path, seed: int, size: tuple[int, int] = (20, 12)) -> np.ndarray:
    """A random-noise JPEG of size (w, h); returns the pixels written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)
    return arr


def image_tree(root: Path, splits: dict[str, dict[str, int]]) -> Path:
    """root/{split}/{class}/img{i}.jpg with the given counts."""
    seed = 0
    for split, classes in splits.items():
        for c, n in classes.items():
            for i in range(n):
                seed += 1
                save_jpeg(root / split / c / f"img{i}.jpg", seed)
    return root


def no_leftovers(parent: Path, keep: set[str]) -> bool:
    """Nothing but ``keep`` in ``parent``: no temp or backup directory left behind."""
    return {p.name for p in parent.iterdir()} <= keep


# --------------------------------------------------------------------------- mini data


def fft_features(x: np.ndarray) -> np.ndarray:
    """Translation- and contrast-sign-invariant features: log FFT magnitude of gray images."""
    g = x.astype(np.float32).mean(-1)
    g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
    return np.log1p(np.abs(np.fft.fft2(g))).reshape(len(x), -1)


def test_mini_classification_deterministic_and_fast() -> None:
    t0 = time.perf_counter()
    a = mini.make_mini_classification(3)
    elapsed = time.perf_counter() - t0
    b = mini.make_mini_classification(3)
    c = mini.make_mini_classification(4, train_per_class=5, test_per_class=2)
    for split in ("train", "test"):
        assert a.splits[split][0].tobytes() == b.splits[split][0].tobytes()
        assert np.array_equal(a.splits[split][1], b.splits[split][1])
    x, y = a.splits["train"]
    assert x.shape == (2000, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [200] * 10 and a.splits["test"][0].shape[0] == 500
    assert not np.array_equal(c.splits["test"][0], a.splits["test"][0][:20])
    assert elapsed < 6.0  # spec: < 2 s on a free core; loose bound for a shared machine


def test_mini_classification_separable() -> None:
    ds = mini.make_mini_classification(0, train_per_class=60, test_per_class=20)
    (x, y), (xt, yt) = ds.splits["train"], ds.splits["test"]
    f, ft = fft_features(x), fft_features(xt)
    mu, sd = f.mean(0), f.std(0) + 1e-6
    f, ft = (f - mu) / sd, (ft - mu) / sd
    # Class means differ clearly ...
    means = np.stack([f[y == c].mean(0) for c in range(10)])
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[~np.eye(10, dtype=bool)].min() > 1.0
    # ... and a 1-NN on shift-invariant features is far above chance (0.1).
    d = (ft**2).sum(1)[:, None] - 2 * ft @ f.T + (f**2).sum(1)[None]
    acc = (y[d.argmin(1)] == yt).mean()
    assert acc > 0.6, acc


def test_mini_styles_deterministic() -> None:
    a, b = mini.make_mini_styles(1, n=6, size=24), mini.make_mini_styles(1, n=6, size=24)
    x, y = a.splits["train"]
    assert x.shape == (6, 24, 24, 3) and x.dtype == np.uint8
    assert (y == -1).all() and a.classes == []
    assert x.tobytes() == b.splits["train"][0].tobytes()
    assert a.extra["generator"] in ("skimage", "procedural")
    assert x.std() > 10  # textures, not flat colour


def test_generate_mini_and_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mini"
    rc, err = run_prepare(
        capsys,
        "--dataset",
        "mini",
        "--source",
        "generate",
        "--out",
        str(out),
        "--seed",
        "5",
        "--option",
        "train_per_class=4",
        "--option",
        "test_per_class=2",
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["format"] == "array" and meta["splits"] == {"train": 40, "test": 20}
    assert meta["image_size"] == [32, 32] and meta["num_classes"] == 10
    for fname, digest in meta["sha256"].items():
        assert formats.sha256sum(out / fname) == digest
    x, y = formats.load_array_split(out, "train")
    assert isinstance(x, np.memmap) and x.dtype == np.uint8 and y.dtype == np.int64
    ds = formats.open_classification(out, "test")
    img, label = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and isinstance(label, int)
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers (spawn) get the path, not a copy of the data
    assert len(pickle.dumps(ds)) < 5000 and torch.equal(clone[0][0], img)
    assert torch.equal(img, torch.from_numpy(np.array(formats.load_array_split(out, "test")[0][0])).permute(2, 0, 1))
    assert formats.open_classification(out, "test", image_size=16)[0][0].shape == (3, 16, 16)
    with pytest.raises(formats.DataError, match="split 'val'"):
        formats.load_array_split(out, "val")
    rc, err = run_prepare(
        capsys, "--dataset", "mini", "--source", "generate", "--out", str(tmp_path / "m2"), "--option", "colour=3"
    )
    assert rc == 1 and "colour" in err


def test_generate_mini_styles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mini_styles"
    rc, err = run_prepare(
        capsys, "--dataset", "mini_styles", "--source", "generate", "--out", str(out), "--option", "n=4"
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["splits"] == {"train": 4} and meta["num_classes"] == 0 and "generator" in meta
    assert (formats.load_array_split(out, "train")[1] == -1).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' numpy-2 warning in annToMask
def test_generate_mini_coco(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pycocotools.coco import COCO

    outs = [tmp_path / "a" / "mini_coco", tmp_path / "b" / "mini_coco"]
    for out in outs:
        rc, err = run_prepare(
            capsys,
            "--dataset",
            "mini_coco",
            "--source",
            "generate",
            "--out",
            str(out),
            "--option",
            "n_train=4",
            "--option",
            "n_val=3",
        )
        assert rc == 0, err
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files)  # deterministic
    meta = formats.read_meta(outs[0])
    assert meta["format"] == "coco" and meta["splits"] == {"train": 4, "val": 3} and meta["num_classes"] == 3
    ds, ann_path = formats.open_coco(outs[0], "val")
    coco = COCO(str(ann_path))
    assert len(coco.getImgIds()) == 3 and len(coco.getCatIds()) == 3
    img, target = ds[0]
    assert img.dtype == torch.float32 and img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[target["image_id"]]))
    assert 1 <= len(anns) == len(target["labels"]) <= 3
    x, y, w, h = anns[0]["bbox"]
    assert target["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h], abs=1e-4)
    assert coco.annToMask(anns[0]).sum() > 0  # polygon segmentation decodes


# --------------------------------------------------------------------------- CIFAR / STL-10


def fake_cifar(tmp_path: Path, hundred: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """A CIFAR-10/100 python tarball (real file names and pickle keys), few images per batch."""
    rng = np.random.default_rng(0)
    folder = tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir()
    label_key = "fine_labels" if hundred else "labels"
    names = ["train", "test"] if hundred else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    expected: dict[str, list] = {"train": [], "test": [], "train_y": [], "test_y": []}
    for name in names:
        n = 3 if hundred else 2
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100 if hundred else 10, n).tolist()
        batch = {
            "batch_label": name,
            label_key: labels,
            "data": data,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        if hundred:
            batch["coarse_labels"] = [0] * n
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        split = "test" if "test" in name else "train"
        expected[split].append(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
        expected[f"{split}_y"].extend(labels)
    meta = (
        {"fine_label_names": [f"c{i}" for i in range(100)]}
        if hundred
        else {"label_names": [f"c{i}" for i in range(10)]}
    )
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    archive = tar_dir(folder, tmp_path / ("cifar-100-python.tar.gz" if hundred else "cifar-10-python.tar.gz"))
    shutil.rmtree(folder)
    return archive, {k: np.concatenate(v) if k in ("train", "test") else np.array(v) for k, v in expected.items()}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_download_prepare(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, expected = fake_cifar(tmp_path, hundred=name == "cifar100")
    use_fake_archives(monkeypatch, name, {archive.name: archive})
    out, downloads = tmp_path / "prepared" / name, tmp_path / "dl"
    rc, err = run_prepare(
        capsys, "--dataset", name, "--source", "download", "--out", str(out), "--root", str(downloads)
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["num_classes"] == (100 if name == "cifar100" else 10) and meta["classes"][1] == "c1"
    assert meta["source"]["type"] == "download" and meta["image_size"] == [32, 32]
    for split in ("train", "test"):
        x, y = formats.load_array_split(out, split)
        assert np.array_equal(x, expected[split]) and np.array_equal(y, expected[f"{split}_y"])
    assert (downloads / archive.name).is_file()
    # Re-running reuses the verified archive and extraction (no download).
    monkeypatch.setattr(sources, "_download", lambda *a: pytest.fail("downloaded again"))
    assert (
        run_prepare(capsys, "--dataset", name, "--source", "download", "--out", str(out), "--root", str(downloads))[0]
        == 0
    )


def test_checksum_mismatch_names_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, _ = fake_cifar(tmp_path)
    use_fake_archives(monkeypatch, "cifar10", {archive.name: archive})
    spec = sources.SOURCES["cifar10"]
    bad = dataclasses.replace(spec.resources[0], md5="0" * 32)
    monkeypatch.setitem(sources.SOURCES, "cifar10", dataclasses.replace(spec, resources=(bad,)))
    out, downloads = tmp_path / "out" / "cifar10", tmp_path / "dl"
    rc, err = run_prepare(
        capsys, "--dataset", "cifar10", "--source", "download", "--out", str(out), "--root", str(downloads)
    )
    assert rc == 1 and "checksum mismatch" in err and str(downloads / archive.name) in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    # A user-placed archive with the wrong checksum is named exactly as well.
    shutil.copy(archive, downloads / archive.name)
    with pytest.raises(formats.ChecksumError, match=str(downloads / archive.name) + ": md5"):
        sources.fetch(bad, downloads)


def fake_stl10(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """An STL-10 binary tarball: images stored column-major (C x W x H), labels 1..10."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "class_names.txt").write_text("\n".join(f"s{i}" for i in range(10)) + "\n")
    expected = {}
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 2)):
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
        expected[split] = x
        if split != "unlabeled":
            y = rng.integers(1, 11, n).astype(np.uint8)
            (folder / f"{split}_y.bin").write_bytes(y.tobytes())
            expected[f"{split}_y"] = y.astype(np.int64) - 1
    archive = tar_dir(folder, tmp_path / "stl10_binary.tar.gz")
    shutil.rmtree(folder)
    return archive, expected


def test_stl10_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchvision.datasets import STL10

    archive, expected = fake_stl10(tmp_path)
    use_fake_archives(monkeypatch, "stl10", {archive.name: archive})
    out = tmp_path / "out" / "stl10"
    rc, err = run_prepare(
        capsys, "--dataset", "stl10", "--source", "download", "--out", str(out), "--root", str(tmp_path / "dl")
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["splits"] == {"train": 3, "test": 2, "unlabeled": 2} and meta["image_size"] == [96, 96]
    for split in ("train", "test", "unlabeled"):
        x, y = formats.load_array_split(out, split)
        assert np.array_equal(x, expected[split])
        assert np.array_equal(y, expected.get(f"{split}_y", np.full(2, -1)))
    # Cross-check the orientation with torchvision's own STL-10 reader (it yields CHW).
    reader = STL10.__new__(STL10)
    reader.root, reader.base_folder = str(tmp_path / "dl" / "extracted"), "stl10_binary"
    tv_images, tv_labels = reader._STL10__loadfile("train_X.bin", "train_y.bin")
    assert np.array_equal(tv_images.transpose(0, 2, 3, 1), expected["train"])
    assert np.array_equal(tv_labels, expected["train_y"])


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder_prepare_and_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = image_tree(tmp_path / "imnet", {"train": {"dog": 2, "cat": 2}, "val": {"dog": 1, "cat": 1}})
    out = tmp_path / "out" / "imagenet"
    rc, err = run_prepare(
        capsys,
        "--dataset",
        "imagenet",
        "--source",
        "path",
        "--root",
        str(root),
        "--out",
        str(out),
        "--option",
        "image_size=8",
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["format"] == "imagefolder" and meta["root"] == str(root.resolve())
    assert meta["classes"] == ["cat", "dog"] and meta["splits"] == {"train": 4, "val": 2}
    rows = (out / "train_index.csv").read_text().splitlines()
    assert rows[0] == "path,label" and rows[1] == "train/cat/img0.jpg,0"
    ds = formats.open_classification(out, "val")
    img, label = ds[1]
    assert img.dtype == torch.uint8 and img.shape == (3, 8, 8) and label == 1
    assert formats.open_classification(out, "train", image_size=10)[0][0].shape == (3, 10, 10)
    assert ds.labels.tolist() == [0, 1]


def test_imagenet100_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(set(sources.IMAGENET100_CMC)) == 100
    root = image_tree(tmp_path / "imnet", {"train": {"a": 1, "b": 1, "c": 1}, "val": {"a": 1, "c": 1}})
    out = tmp_path / "out" / "in100"
    rc, err = run_prepare(
        capsys,
        "--dataset",
        "imagenet100",
        "--source",
        "path",
        "--root",
        str(root),
        "--out",
        str(out),
        "--option",
        "classes=c,a",
    )
    assert rc == 0, err
    assert formats.read_meta(out)["classes"] == ["a", "c"]
    rc, err = run_prepare(
        capsys,
        "--dataset",
        "imagenet100",
        "--source",
        "path",
        "--root",
        str(root),
        "--out",
        str(out),
        "--option",
        "classes=a,b",
    )
    assert rc == 1 and str(root / "val" / "b") in err
    assert formats.read_meta(out)["classes"] == ["a", "c"]  # the good version is untouched


def test_corrupt_images_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = image_tree(tmp_path / "tree", {"train": {"x": 1, "y": 1}})
    # A truncated JPEG: the header parses, the pixels do not.
    good = root / "train" / "x" / "img0.jpg"
    save_jpeg(good, 7, size=(64, 64))
    truncated = root / "train" / "y" / "img0.jpg"
    truncated.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.6)])
    out = tmp_path / "out" / "tree"
    rc, err = run_prepare(
        capsys, "--dataset", "imagefolder", "--source", "path", "--root", str(root), "--out", str(out)
    )
    assert rc == 0, err  # default verify=header does not decode
    ds = formats.open_classification(out, "train", image_size=8)
    with pytest.raises(formats.CorruptImageError, match=str(truncated)):
        ds[1]
    rc, err = run_prepare(
        capsys,
        "--dataset",
        "imagefolder",
        "--source",
        "path",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "out" / "full"),
        "--option",
        "verify=full",
    )
    assert rc == 1 and str(truncated) in err and "corrupt image" in err
    # Garbage bytes with a .jpg name fail even the header check.
    garbage = root / "train" / "x" / "bad.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    rc, err = run_prepare(
        capsys, "--dataset", "imagefolder", "--source", "path", "--root", str(root), "--out", str(out)
    )
    assert rc == 1 and str(garbage) in err and len(err.strip().splitlines()) == 1
    assert formats.read_meta(out)["splits"] == {"train": 2}  # previous good version kept
    assert no_leftovers(out.parent, {"tree"})


def test_missing_paths_and_unprepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    rc, err = run_prepare(
        capsys, "--dataset", "imagenet", "--source", "path", "--root", str(missing), "--out", str(tmp_path / "o")
    )
    assert rc == 1 and str(missing) in err and not (tmp_path / "o").exists()
    rc, err = run_prepare(capsys, "--dataset", "imagenet", "--source", "download", "--out", str(tmp_path / "o"))
    assert rc == 1 and "image-net.org" in err and "--root" in err
    # Every source has a preparer now; a spec without one still fails before any download.
    spec = dataclasses.replace(sources.SOURCES["sun397"], preparer=None)
    monkeypatch.setitem(sources.SOURCES, "sun397", spec)
    rc, err = run_prepare(capsys, "--dataset", "sun397", "--source", "download", "--out", str(tmp_path / "o"))
    assert rc == 1 and "sun397" in err and "not implemented" in err
    with pytest.raises(formats.DataError, match=r"dataset not prepared: .*meta.json missing; run rule prepare_dataset"):
        formats.read_meta(tmp_path)
    assert no_leftovers(tmp_path, {"nowhere"})


def test_failure_mid_write_keeps_old_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d" / "mini"
    args = [
        "--dataset",
        "mini",
        "--source",
        "generate",
        "--out",
        str(out),
        "--option",
        "train_per_class=2",
        "--option",
        "test_per_class=1",
    ]
    assert run_prepare(capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail_after_arrays(*a: object, **k: object) -> None:
        raise OSError(f"disk full while writing {out}/meta.json")

    monkeypatch.setattr(formats, "finish_array_meta", fail_after_arrays)
    rc, err = run_prepare(capsys, *args[:-3], "train_per_class=3", "--option", "test_per_class=1")
    assert rc == 1 and "disk full" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert no_leftovers(out.parent, {"mini"})


def test_tiny_imagenet_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (src / "val" / "images").mkdir(parents=True)
    (src / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for i, w in enumerate(wnids):
        save_jpeg(src / "train" / w / "images" / f"{w}_0.JPEG", i, size=(64, 64))
        save_jpeg(src / "val" / "images" / f"val_{i}.JPEG", 10 + i, size=(64, 64))
    (src / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\nval_1.JPEG\tn01\t1\t1\t9\t9\n")
    archive = zip_dir(src, tmp_path / "tiny-imagenet-200.zip", "tiny-imagenet-200")
    use_fake_archives(monkeypatch, "tinyimagenet", {archive.name: archive})
    out = tmp_path / "out" / "tiny"
    rc, err = run_prepare(
        capsys, "--dataset", "tinyimagenet", "--source", "download", "--out", str(out), "--root", str(tmp_path / "dl")
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["image_size"] == [64, 64] and meta["splits"] == {"train": 2, "val": 2}
    ds = formats.open_classification(out, "val")
    assert ds.labels.tolist() == [1, 0] and ds[0][0].shape == (3, 64, 64)


def _dtd(root: Path) -> None:
    for i, rel in enumerate(["banded/b_1.jpg", "dotted/d_1.jpg", "banded/b_2.jpg"]):
        save_jpeg(root / "dtd" / "images" / rel, i)
    for split, rel in (
        ("train", "banded/b_1.jpg\ndotted/d_1.jpg"),
        ("val", "banded/b_2.jpg"),
        ("test", "dotted/d_1.jpg"),
    ):
        (root / "dtd" / "labels").mkdir(parents=True, exist_ok=True)
        (root / "dtd" / "labels" / f"{split}1.txt").write_text(rel + "\n")


def _food101(root: Path) -> None:
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "classes.txt").write_text("apple_pie\nsushi\n")
    (base / "meta" / "train.txt").write_text("apple_pie/1\nsushi/2\n")
    (base / "meta" / "test.txt").write_text("sushi/3\n")
    for i, rel in enumerate(["apple_pie/1", "sushi/2", "sushi/3"]):
        save_jpeg(base / "images" / f"{rel}.jpg", i)


def _pets(root: Path) -> None:
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\ngreat_pyrenees_2 2 2 1\n")
    (root / "annotations" / "test.txt").write_text("great_pyrenees_3 2 2 1\n")
    for i, name in enumerate(["Abyssinian_1", "great_pyrenees_2", "great_pyrenees_3"]):
        save_jpeg(root / "images" / f"{name}.jpg", i)


def _aircraft(root: Path) -> None:
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\n")
    for split, lines in (("train", "1 707-320\n2 A300B4\n"), ("val", "3 A300B4\n"), ("test", "4 707-320\n")):
        (data / f"images_variant_{split}.txt").write_text(lines)
    for i in range(1, 5):
        save_jpeg(data / "images" / f"{i}.jpg", i)


@pytest.mark.parametrize(
    ("name", "build", "classes", "splits"),
    [
        ("dtd", _dtd, ["banded", "dotted"], {"train": 2, "val": 1, "test": 1}),
        ("food101", _food101, ["apple_pie", "sushi"], {"train": 2, "test": 1}),
        ("pets", _pets, ["Abyssinian", "great_pyrenees"], {"train": 2, "test": 1}),
        ("aircraft", _aircraft, ["707-320", "A300B4"], {"train": 2, "val": 1, "test": 1}),
    ],
)
def test_split_list_datasets(
    name: str, build, classes: list[str], splits: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build(tmp_path / "raw")
    out = tmp_path / "out" / name
    rc, err = run_prepare(
        capsys, "--dataset", name, "--source", "path", "--root", str(tmp_path / "raw"), "--out", str(out)
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["classes"] == classes and meta["splits"] == splits
    assert formats.open_classification(out, "train", image_size=8)[1][1] == 1


# --------------------------------------------------------------------------- COCO


def fake_coco_zips(tmp_path: Path) -> dict[str, Path]:
    """annotations_trainval2017.zip, train2017.zip, val2017.zip with real COCO layout (JPEG images)."""
    data = mini.make_mini_coco(0, n_train=3, n_val=2, size=32)
    archives = {}
    ann_dir = tmp_path / "src" / "annotations"
    ann_dir.mkdir(parents=True)
    for split, part in data.items():
        img_dir = tmp_path / "src" / f"{split}2017"
        img_dir.mkdir()
        coco = json.loads(json.dumps(part.coco))
        for info, (_, arr) in zip(coco["images"], part.images):
            info["file_name"] = f"{info['id']:012d}.jpg"
            Image.fromarray(arr).save(img_dir / info["file_name"], format="JPEG")
        (ann_dir / f"instances_{split}2017.json").write_text(json.dumps(coco))
        archives[f"{split}2017.zip"] = zip_dir(img_dir, tmp_path / f"{split}2017.zip", f"{split}2017")
    archives["annotations_trainval2017.zip"] = zip_dir(
        ann_dir, tmp_path / "annotations_trainval2017.zip", "annotations"
    )
    return archives


def test_coco_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pycocotools.coco import COCO

    use_fake_archives(monkeypatch, "coco", fake_coco_zips(tmp_path))
    out = tmp_path / "out" / "coco"
    rc, err = run_prepare(
        capsys, "--dataset", "coco", "--source", "download", "--out", str(out), "--root", str(tmp_path / "dl")
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["format"] == "coco" and meta["splits"] == {"train": 3, "val": 2}
    assert meta["num_classes"] == 3 and meta["model_num_classes"] == 4
    assert (out / "images" / "train").is_symlink()
    ds, ann_path = formats.open_coco(out, "train")
    assert len(COCO(str(ann_path)).getImgIds()) == 3
    img, target = ds[2]
    assert img.shape == (3, 32, 32) and target["boxes"].shape[1] == 4 and target["image_id"] == 3
    # A missing image is named.
    extracted = tmp_path / "dl" / "extracted"
    victim = extracted / "val2017" / "000000000002.jpg"
    victim.unlink()
    rc, err = run_prepare(
        capsys,
        "--dataset",
        "coco",
        "--source",
        "path",
        "--root",
        str(extracted),
        "--out",
        str(tmp_path / "out" / "coco2"),
    )
    assert rc == 1 and str(victim) in err and not (tmp_path / "out" / "coco2").exists()


def test_sources_table_consistent() -> None:
    for name, spec in sources.SOURCES.items():
        assert spec.kind in ("download", "manual"), name
        assert spec.preparer is None or spec.preparer in sources.PREPARERS, name
        assert spec.format in ("array", "imagefolder", "coco"), name
        if spec.kind == "download":
            assert spec.resources and all(r.url.startswith("http") and r.filename for r in spec.resources), name
        else:
            assert "--root" in spec.instructions, name
    assert sources.SOURCES["cifar10"].resources[0].md5 == "c58f30108f718f92721af3b95e74349a"


def fake_voc_tar(
    tmp_path: Path, split: str, stems: list[str], archive_name: str, year: str = "2007", name: str = "dog"
) -> Path:
    """A VOCdevkit/VOC{year} tarball: JPEGImages, Annotations (XML; a ``name`` box and a difficult
    person), ImageSets/Main/{split}.txt."""
    base = tmp_path / f"{year}_{split}" / "VOCdevkit" / f"VOC{year}"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    for i, stem in enumerate(stems):
        save_jpeg(base / "JPEGImages" / f"{stem}.jpg", i, size=(40, 30))
        (base / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>40</width><height>30</height>"
            "<depth>3</depth></size>"
            f"<object><name>{name}</name><difficult>0</difficult>"
            "<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object>"
            "<object><name>person</name><difficult>1</difficult>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>"
        )
    archive = tmp_path / archive_name
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / f"{year}_{split}" / "VOCdevkit", arcname="VOCdevkit")
    return archive


def test_voc_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pycocotools.coco import COCO

    archives = {
        "VOCtrainval_06-Nov-2007.tar": fake_voc_tar(
            tmp_path, "trainval", ["000005", "000007"], "VOCtrainval_06-Nov-2007.tar"
        ),
        "VOCtest_06-Nov-2007.tar": fake_voc_tar(tmp_path, "test", ["000001"], "VOCtest_06-Nov-2007.tar"),
    }
    use_fake_archives(monkeypatch, "voc07", archives)
    out = tmp_path / "out" / "voc07"
    rc, err = run_prepare(
        capsys, "--dataset", "voc07", "--source", "download", "--out", str(out), "--root", str(tmp_path / "dl")
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["splits"] == {"trainval": 2, "test": 1} and meta["num_classes"] == 20
    ds, ann_path = formats.open_coco(out, "test")
    coco = COCO(str(ann_path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert anns[0]["bbox"] == [4.0, 5.0, 16.0, 20.0] and anns[1]["iscrowd"] == 1
    img, target = ds[0]
    assert img.shape == (3, 30, 40)
    assert target["boxes"].tolist() == [[4.0, 5.0, 20.0, 25.0]] and target["labels"].tolist() == [
        12
    ]  # dog; difficult dropped


def fake_voc0712_archives(tmp_path: Path) -> dict[str, Path]:
    """The three VOC07+12 archives: 2007 trainval (dogs), 2007 test (dog), 2012 trainval (cats).

    Both 2007 tarballs extract into one VOCdevkit/VOC2007 folder, as the real ones do.
    """
    return {
        "VOCtrainval_06-Nov-2007.tar": fake_voc_tar(
            tmp_path, "trainval", ["000005", "000007"], "VOCtrainval_06-Nov-2007.tar"
        ),
        "VOCtest_06-Nov-2007.tar": fake_voc_tar(tmp_path, "test", ["000001", "000002"], "VOCtest_06-Nov-2007.tar"),
        "VOCtrainval_11-May-2012.tar": fake_voc_tar(
            tmp_path, "trainval", ["2008_000002", "2008_000003", "2009_000001"], "VOCtrainval_11-May-2012.tar",
            year="2012", name="cat",
        ),
    }  # fmt: skip


def test_voc0712_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pycocotools.coco import COCO

    use_fake_archives(monkeypatch, "voc0712", fake_voc0712_archives(tmp_path))
    out = tmp_path / "out" / "voc0712"
    rc, err = run_prepare(
        capsys, "--dataset", "voc0712", "--source", "download", "--out", str(out), "--root", str(tmp_path / "dl")
    )
    assert rc == 0, err
    meta = formats.read_meta(out)
    # train = VOC2007 trainval + VOC2012 trainval, test = VOC2007 test.
    assert meta["splits"] == {"trainval": 5, "test": 2}
    assert [c["name"] for c in meta["categories"]] == list(sources.VOC_CLASSES) and meta["model_num_classes"] == 21

    train, train_ann = formats.open_coco(out, "trainval")
    coco = COCO(str(train_ann))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4, 5]  # one id per image: the years' ids do not collide
    names = [im["file_name"] for im in train.images]
    assert names == [
        "VOC2007/000005.jpg", "VOC2007/000007.jpg",
        "VOC2012/2008_000002.jpg", "VOC2012/2008_000003.jpg", "VOC2012/2009_000001.jpg",
    ]  # fmt: skip
    labels = [train[i][1]["labels"].tolist() for i in range(len(train))]
    assert labels == [[12], [12], [8], [8], [8]]  # dog (2007), cat (2012); difficult persons dropped
    for i in range(len(train)):
        assert train[i][0].shape == (3, 30, 40)
    assert all(len(coco.getAnnIds(imgIds=[i])) == 2 for i in coco.getImgIds())

    test, _ = formats.open_coco(out, "test")
    test_names = [im["file_name"] for im in test.images]
    assert test_names == ["000001.jpg", "000002.jpg"]
    train_files = {(train.image_dir / n).resolve() for n in names}
    test_files = {(test.image_dir / n).resolve() for n in test_names}
    assert all(p.is_file() for p in train_files | test_files)
    assert not train_files & test_files  # the VOC2007 test images are not trained on
    extracted = tmp_path / "dl" / "extracted" / "VOCdevkit"
    assert test_files == {extracted / "VOC2007" / "JPEGImages" / n for n in test_names}

    # The same from the extracted copy, with copied images instead of links.
    copied = tmp_path / "out" / "voc0712_copy"
    rc, err = run_prepare(
        capsys, "--dataset", "voc0712", "--source", "path", "--root", str(extracted.parent), "--out", str(copied),
        "--option", "link=copy",
    )  # fmt: skip
    assert rc == 0, err
    image = copied / "images" / "trainval" / "VOC2012" / "2009_000001.jpg"
    assert image.is_file() and not image.is_symlink() and not image.parent.is_symlink()
    assert (copied / "annotations" / "instances_trainval.json").read_bytes() == train_ann.read_bytes()


def test_voc0712_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archives = fake_voc0712_archives(tmp_path)
    raw = tmp_path / "raw"
    for name in ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"):  # no VOC2012
        with tarfile.open(archives[name]) as tar:
            tar.extractall(raw, filter="data")
    out = tmp_path / "out" / "voc0712"
    rc, err = run_prepare(capsys, "--dataset", "voc0712", "--source", "path", "--root", str(raw), "--out", str(out))
    assert rc == 1 and "VOCdevkit/VOC2012/ImageSets/Main" in err and not out.exists()
    rc, err = run_prepare(
        capsys, "--dataset", "voc0712", "--source", "path", "--root", str(raw), "--out", str(out),
        "--option", "splits=trainval=2007+12",
    )  # fmt: skip
    assert rc == 1 and "trainval=2007+12" in err and "SPLIT=YEAR+YEAR" in err and not out.exists()
    (raw / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    rc, err = run_prepare(
        capsys, "--dataset", "voc0712", "--source", "path", "--root", str(raw), "--out", str(out),
        "--option", "splits=test=2007",
    )  # fmt: skip
    assert rc == 1 and "000001.jpg" in err and not out.exists()


def test_voc12_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = fake_voc_tar(
        tmp_path, "trainval", ["2008_000002", "2010_000001"], "VOCtrainval_11-May-2012.tar", year="2012", name="cat"
    )
    use_fake_archives(monkeypatch, "voc12", {archive.name: archive})
    out = tmp_path / "out" / "voc12"
    rc, err = run_prepare(
        capsys, "--dataset", "voc12", "--source", "download", "--out", str(out), "--root", str(tmp_path / "dl")
    )
    assert rc == 0, err
    assert formats.read_meta(out)["splits"] == {"trainval": 2}
    ds, _ = formats.open_coco(out, "trainval")
    assert [im["file_name"] for im in ds.images] == ["2008_000002.jpg", "2010_000001.jpg"]
    assert ds[1][1]["labels"].tolist() == [8]  # cat

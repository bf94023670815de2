"""The transfer, iNaturalist, Places365, ImageNet 1% and Kaggle preparers on fake releases.

Each test builds a tiny copy of the source in its publisher's real format (MATLAB v5
files written with scipy, the Caltech zip holding a tarball, SUN397's partition lists,
COCO-style iNaturalist JSON, Places365 file lists, Kaggle CSVs) with a few small JPEGs,
then runs the real ``prepare`` CLI the rule calls. Download sources go through the real
fetch/verify/extract path with only the network replaced (``use_fake_archives``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat
from test_data import run_prepare, save_jpeg, tar_dir, use_fake_archives, zip_dir

from sslaug.data import formats, sources


def prepare_download(capsys: pytest.CaptureFixture[str], name: str, tmp_path: Path, *options: str) -> tuple[int, str]:
    args = ["--dataset", name, "--source", "download", "--out", str(tmp_path / "out" / name)]
    args += ["--root", str(tmp_path / "dl")]
    for option in options:
        args += ["--option", option]
    return run_prepare(capsys, *args)


def prepare_path(
    capsys: pytest.CaptureFixture[str], name: str, root: Path, out: Path, *options: str, source: str = "path"
) -> tuple[int, str]:
    args = ["--dataset", name, "--source", source, "--root", str(root), "--out", str(out)]
    for option in options:
        args += ["--option", option]
    return run_prepare(capsys, *args)


def use_fake_archives_sha256(monkeypatch: pytest.MonkeyPatch, name: str, archives: dict[str, Path]) -> None:
    """``use_fake_archives``, keeping resources verified by sha256 on sha256 (of the fake file)."""
    original = sources.SOURCES[name]
    use_fake_archives(monkeypatch, name, archives)
    spec = sources.SOURCES[name]
    resources = tuple(
        dataclasses.replace(r, md5=None, sha256=formats.sha256sum(archives[r.filename])) if o.sha256 else r
        for r, o in zip(spec.resources, original.resources)
    )
    monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(spec, resources=resources))


def index_rows(out: Path, split: str) -> list[tuple[str, int]]:
    paths, labels = formats.read_imagefolder_index(out, split)
    return list(zip(paths, labels.tolist()))


# --------------------------------------------------------------------------- Flowers-102


def fake_flowers(tmp_path: Path) -> dict[str, Path]:
    """102flowers.tgz (jpg/image_NNNNN.jpg), imagelabels.mat and setid.mat as MATLAB v5 files."""
    src = tmp_path / "flowers_src"
    for i in range(1, 9):
        save_jpeg(src / "jpg" / f"image_{i:05d}.jpg", i)
    labels = np.array([1, 2, 1, 102, 2, 1, 102, 2], dtype=np.uint8)  # as the release: 1-based, uint8
    savemat(tmp_path / "imagelabels.mat", {"labels": labels[None, :]})
    ids = {"trnid": [1, 2], "valid": [3, 5], "tstid": [4, 6, 7, 8]}
    savemat(tmp_path / "setid.mat", {k: np.array(v, dtype=np.uint16)[None, :] for k, v in ids.items()})
    with tarfile.open(tmp_path / "102flowers.tgz", "w:gz") as tar:
        tar.add(src / "jpg", arcname="jpg")
    return {n: tmp_path / n for n in ("102flowers.tgz", "imagelabels.mat", "setid.mat")}


def test_flowers102_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchvision.datasets import Flowers102

    use_fake_archives(monkeypatch, "flowers102", fake_flowers(tmp_path))
    rc, err = prepare_download(capsys, "flowers102", tmp_path, "image_size=16")
    assert rc == 0, err
    out = tmp_path / "out" / "flowers102"
    meta = formats.read_meta(out)
    assert meta["num_classes"] == 102 and meta["classes"][0] == "pink primrose"
    assert meta["splits"] == {"train": 2, "val": 2, "test": 4, "trainval": 4}
    assert index_rows(out, "train") == [("jpg/image_00001.jpg", 0), ("jpg/image_00002.jpg", 1)]
    assert index_rows(out, "test") == [
        ("jpg/image_00004.jpg", 101),
        ("jpg/image_00006.jpg", 0),
        ("jpg/image_00007.jpg", 101),
        ("jpg/image_00008.jpg", 1),
    ]
    assert index_rows(out, "trainval") == index_rows(out, "train") + index_rows(out, "val")
    # Same images and labels as torchvision's own Flowers-102 reader on the same files
    # (its integrity check compares the real files' md5s, so it is bypassed here).
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)
    (tmp_path / "tv").mkdir()
    (tmp_path / "tv" / "flowers-102").symlink_to(tmp_path / "dl" / "extracted", target_is_directory=True)
    reader = Flowers102(str(tmp_path / "tv"), split="test")
    assert [p.name for p in reader._image_files] == [Path(p).name for p, _ in index_rows(out, "test")]
    assert reader._labels == [label for _, label in index_rows(out, "test")]
    img, label = formats.open_classification(out, "test")[3]
    assert img.shape == (3, 16, 16) and label == 1 and Flowers102.classes[label] == "hard-leaved pocket orchid"


def test_flowers102_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = fake_flowers(tmp_path)
    raw = tmp_path / "raw"
    with tarfile.open(files["102flowers.tgz"]) as tar:
        tar.extractall(raw, filter="data")
    (raw / "setid.mat").write_bytes(files["setid.mat"].read_bytes())
    out = tmp_path / "out" / "flowers102"
    # Missing label file: named.
    rc, err = prepare_path(capsys, "flowers102", raw, out)
    assert rc == 1 and str(raw / "imagelabels.mat") in err
    # A label file that is not MATLAB: named.
    (raw / "imagelabels.mat").write_text("not a mat file")
    rc, err = prepare_path(capsys, "flowers102", raw, out)
    assert rc == 1 and str(raw / "imagelabels.mat") in err and len(err.strip().splitlines()) == 1
    # An image listed in setid.mat but absent: named.
    (raw / "imagelabels.mat").write_bytes(files["imagelabels.mat"].read_bytes())
    (raw / "jpg" / "image_00007.jpg").unlink()
    rc, err = prepare_path(capsys, "flowers102", raw, out)
    assert rc == 1 and str(raw / "jpg" / "image_00007.jpg") in err and not out.exists()


# --------------------------------------------------------------------------- Caltech-101


def fake_caltech_zip(tmp_path: Path, counts: dict[str, int]) -> Path:
    """caltech-101.zip holding caltech-101/101_ObjectCategories.tar.gz, as data.caltech.edu ships it."""
    cats = tmp_path / "cal_src" / "101_ObjectCategories"
    seed = 0
    for c, n in counts.items():
        for i in range(1, n + 1):
            seed += 1
            save_jpeg(cats / c / f"image_{i:04d}.jpg", seed)
    inner = tmp_path / "cal_src" / "caltech-101"
    inner.mkdir()
    tar_dir(cats, inner / "101_ObjectCategories.tar.gz")
    (inner / "show_annotation.m").write_text("% not used\n")
    return zip_dir(inner, tmp_path / "caltech-101.zip", "caltech-101")


def test_caltech101_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = fake_caltech_zip(tmp_path, {"BACKGROUND_Google": 4, "Faces": 5, "ant": 3})
    use_fake_archives(monkeypatch, "caltech101", {archive.name: archive})
    rc, err = prepare_download(capsys, "caltech101", tmp_path, "train_per_class=2")
    assert rc == 0, err
    out = tmp_path / "out" / "caltech101"
    meta = formats.read_meta(out)
    # Kornblith et al.: background included (102 classes on the real data).
    assert meta["classes"] == ["BACKGROUND_Google", "Faces", "ant"]
    assert meta["splits"] == {"train": 6, "test": 6}
    train, test = index_rows(out, "train"), index_rows(out, "test")
    assert [label for _, label in train] == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in train} & {p for p, _ in test}  # disjoint
    assert sorted(p for p, _ in train + test) == sorted(
        f"{c}/image_{i:04d}.jpg"
        for c, n in {"BACKGROUND_Google": 4, "Faces": 5, "ant": 3}.items()
        for i in range(1, n + 1)
    )
    categories = tmp_path / "dl" / "extracted" / "caltech-101" / "101_ObjectCategories"
    assert meta["root"] == str(categories.resolve())  # the inner tarball was extracted once, in place
    # Deterministic: a rerun from the extracted copy draws the same split; another seed differs.
    out2 = tmp_path / "out" / "again"
    assert prepare_path(capsys, "caltech101", tmp_path / "dl" / "extracted", out2, "train_per_class=2")[0] == 0
    assert index_rows(out2, "train") == train
    out3 = tmp_path / "out" / "seed1"
    rc, _ = prepare_path(capsys, "caltech101", categories.parent, out3, "train_per_class=2", "split_seed=1")
    assert rc == 0 and index_rows(out3, "train") != train
    # Background excluded on request (torchvision's 101 classes).
    out4 = tmp_path / "out" / "nobg"
    rc, _ = prepare_path(capsys, "caltech101", categories, out4, "train_per_class=2", "background=exclude")
    assert rc == 0 and formats.read_meta(out4)["classes"] == ["Faces", "ant"]


def test_caltech101_too_few_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = fake_caltech_zip(tmp_path, {"Faces": 5, "ant": 2})
    raw = tmp_path / "raw"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(raw)
    rc, err = prepare_path(capsys, "caltech101", raw, tmp_path / "out" / "c", "train_per_class=2")
    assert rc == 1 and str(raw / "caltech-101" / "101_ObjectCategories" / "ant") in err and "2 images" in err
    rc, err = prepare_path(capsys, "caltech101", tmp_path / "cal_src" / "caltech-101" / "nothing", tmp_path / "o")
    assert rc == 1 and "nothing" in err


# --------------------------------------------------------------------------- SUN397


def fake_sun397(tmp_path: Path) -> dict[str, Path]:
    """SUN397.tar.gz (SUN397/<letter>/<category>/sun_*.jpg) and Partitions.zip (flat split lists)."""
    src = tmp_path / "sun_src" / "SUN397"
    entries = {
        "/a/abbey": ["sun_aa.jpg", "sun_ab.jpg"],
        "/a/apartment_building/outdoor": ["sun_ac.jpg", "sun_ad.jpg"],
        "/b/beach": ["sun_ae.jpg", "sun_af.jpg"],
    }
    for seed, (cat, files) in enumerate(entries.items()):
        for j, f in enumerate(files):
            save_jpeg(src / cat.lstrip("/") / f, 10 * seed + j)
    (src / "ClassName.txt").write_text("\n".join(entries) + "\n")
    parts = tmp_path / "sun_src" / "Partitions"
    parts.mkdir()
    (parts / "ClassName.txt").write_text("\n".join(entries) + "\n")
    for p in (1, 2):
        first = 0 if p == 1 else 1
        (parts / f"Training_{p:02d}.txt").write_text("".join(f"{c}/{fs[first]}\n" for c, fs in entries.items()))
        (parts / f"Testing_{p:02d}.txt").write_text("".join(f"{c}/{fs[1 - first]}\n" for c, fs in entries.items()))
    partitions = tmp_path / "Partitions.zip"
    with zipfile.ZipFile(partitions, "w") as zf:
        for f in sorted(parts.iterdir()):
            zf.write(f, f.name)
    return {"SUN397.tar.gz": tar_dir(src, tmp_path / "SUN397.tar.gz"), "Partitions.zip": partitions}


def test_sun397_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archives = fake_sun397(tmp_path)
    # The partitions resource is verified by sha256: keep that path exercised with the fake file's digest.
    spec = sources.SOURCES["sun397"]
    assert spec.resources[1].sha256 is not None and spec.resources[1].md5 is None
    use_fake_archives_sha256(monkeypatch, "sun397", archives)
    rc, err = prepare_download(capsys, "sun397", tmp_path)
    assert rc == 0, err
    out = tmp_path / "out" / "sun397"
    meta = formats.read_meta(out)
    assert meta["classes"] == ["abbey", "apartment_building/outdoor", "beach"]
    assert index_rows(out, "train") == [
        ("a/abbey/sun_aa.jpg", 0),
        ("a/apartment_building/outdoor/sun_ac.jpg", 1),
        ("b/beach/sun_ae.jpg", 2),
    ]
    assert meta["splits"] == {"train": 3, "test": 3}
    out2 = tmp_path / "out" / "p2"
    rc, err = prepare_path(capsys, "sun397", tmp_path / "dl" / "extracted", out2, "partition=2")
    assert rc == 0, err
    assert index_rows(out2, "train")[0] == ("a/abbey/sun_ab.jpg", 0)


def test_sun397_bad_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    archives = fake_sun397(tmp_path)
    raw = tmp_path / "raw"
    with tarfile.open(archives["SUN397.tar.gz"]) as tar:
        tar.extractall(raw, filter="data")
    out = tmp_path / "out" / "sun"
    rc, err = prepare_path(capsys, "sun397", raw, out)
    assert rc == 1 and "Training_01.txt" in err and "Partitions.zip" in err  # partitions not extracted
    with zipfile.ZipFile(archives["Partitions.zip"]) as zf:
        zf.extractall(raw)
    victim = raw / "SUN397" / "b" / "beach" / "sun_af.jpg"
    victim.unlink()
    rc, err = prepare_path(capsys, "sun397", raw, out)
    assert rc == 1 and str(victim) in err
    # A wrong Partitions.zip placed in the download directory is caught by its sha256 and named.
    use_fake_archives_sha256(monkeypatch, "sun397", archives)
    downloads = tmp_path / "dl"
    downloads.mkdir()
    shutil.copy(archives["SUN397.tar.gz"], downloads / "SUN397.tar.gz")
    (downloads / "Partitions.zip").write_bytes(b"not the partitions")
    rc, err = run_prepare(
        capsys, "--dataset", "sun397", "--source", "download", "--out", str(out), "--root", str(downloads)
    )
    assert rc == 1 and "checksum mismatch" in err and f"{downloads / 'Partitions.zip'}: sha256" in err


# --------------------------------------------------------------------------- ImageNet 1%


def fake_imagenet(root: Path) -> Path:
    for split, wnids in (("train", ["n01440764", "n01443537"]), ("val", ["n01440764", "n01443537"])):
        for k, wnid in enumerate(wnids):
            for i in range(3):
                name = f"{wnid}_{10 + i}.JPEG" if split == "train" else f"ILSVRC2012_val_{k * 3 + i:08d}.JPEG"
                save_jpeg(root / split / wnid / name, 7 * k + i)
    return root


def test_imagenet_1pct_subset_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fake_imagenet(tmp_path / "imagenet")
    subset = tmp_path / "1percent.txt"
    subset.write_text("n01443537_11.JPEG\nn01440764_10.JPEG\n")
    use_fake_archives(monkeypatch, "imagenet_1pct", {"1percent.txt": subset})
    out = tmp_path / "data" / "imagenet_1pct"
    rc, err = prepare_path(capsys, "imagenet_1pct", root, out, source="manual")
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["classes"] == ["n01440764", "n01443537"] and meta["splits"] == {"train": 2, "val": 6}
    assert index_rows(out, "train") == [
        ("train/n01443537/n01443537_11.JPEG", 1),
        ("train/n01440764/n01440764_10.JPEG", 0),
    ]
    assert meta["subset"]["images"] == 2 and meta["subset"]["sha256"] == formats.sha256sum(subset)
    # Fetched like an archive into data/_downloads/<name> (the rule's default download directory).
    assert (tmp_path / "data" / "_downloads" / "imagenet_1pct" / "1percent.txt").read_text() == subset.read_text()
    # A download source is refused: ImageNet itself must come from the user.
    rc, err = run_prepare(capsys, "--dataset", "imagenet_1pct", "--source", "download", "--out", str(out))
    assert rc == 1 and "image-net.org" in err


def test_imagenet_1pct_bad_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_imagenet(tmp_path / "imagenet")
    out = tmp_path / "data" / "imagenet_1pct"
    bad = tmp_path / "bad.txt"
    for text, expected in (
        ("n01440764_10.JPEG\nnot-a-name.jpg\n", "line 2"),
        ("n01440764_10.JPEG\nn01440764_10.JPEG\n", "listed twice"),
        ("n09999999_1.JPEG\n", str(root / "train" / "n09999999")),
        ("n01440764_99.JPEG\n", str(root / "train" / "n01440764" / "n01440764_99.JPEG")),
    ):
        bad.write_text(text)
        rc, err = prepare_path(capsys, "imagenet_1pct", root, out, f"subset={bad}", source="manual")
        assert rc == 1 and expected in err, err
    rc, err = prepare_path(capsys, "imagenet_1pct", root, out, f"subset={tmp_path / 'none.txt'}", source="manual")
    assert rc == 1 and str(tmp_path / "none.txt") in err and not out.exists()


# --------------------------------------------------------------------------- iNaturalist


def fake_inat(tmp_path: Path, year: str) -> dict[str, Path]:
    """Image tarball + train/val annotation tarballs in the release's layout and JSON schema."""
    src = tmp_path / f"inat_src{year}"
    image_dir = "train_val2018" if year == "2018" else None
    categories = [
        {"id": 0, "name": "Aaa bbb", "supercategory": "Plantae", "kingdom": "Plantae"},
        {"id": 1, "name": "Ccc ddd", "supercategory": "Aves", "kingdom": "Animalia"},
    ]
    archives = {}
    seed = 0
    for split in ("train", "val"):
        images, annotations = [], []
        for k in range(3):
            cat = categories[k % 2]
            folder = (
                f"{image_dir}/{cat['supercategory']}/{cat['id']}"
                if year == "2018"
                else f"{split}/{cat['id']:05d}_{cat['kingdom']}_{cat['name'].replace(' ', '_')}"
            )
            seed += 1
            file_name = f"{folder}/{split}{k:03d}.jpg"
            save_jpeg(src / file_name, seed)
            images.append({"id": seed, "file_name": file_name, "width": 20, "height": 12})
            annotations.append({"id": 100 + seed, "image_id": seed, "category_id": cat["id"]})
        json_name = f"{split}2018.json" if year == "2018" else f"{split}.json"
        (src / json_name).write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
        with tarfile.open(tmp_path / f"{json_name}.tar.gz", "w:gz") as tar:
            tar.add(src / json_name, arcname=json_name)
        archives[f"{json_name}.tar.gz"] = tmp_path / f"{json_name}.tar.gz"
        if year == "2021":
            archives[f"{split}.tar.gz"] = tar_dir(src / split, tmp_path / f"{split}.tar.gz")
    if year == "2018":
        archives["train_val2018.tar.gz"] = tar_dir(src / image_dir, tmp_path / "train_val2018.tar.gz")
    return archives


@pytest.mark.parametrize("name", ["inat18", "inat21"])
def test_inat_download_prepare(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    year = "2018" if name == "inat18" else "2021"
    use_fake_archives(monkeypatch, name, fake_inat(tmp_path, year))
    rc, err = prepare_download(capsys, name, tmp_path)
    assert rc == 0, err
    out = tmp_path / "out" / name
    meta = formats.read_meta(out)
    assert meta["classes"] == ["Aaa bbb", "Ccc ddd"] and meta["splits"] == {"train": 3, "val": 3}
    val = index_rows(out, "val")
    assert [label for _, label in val] == [0, 1, 0]
    prefix = "train_val2018/Plantae/0/" if year == "2018" else "val/00000_Plantae_Aaa_bbb/"
    assert val[0][0] == f"{prefix}val000.jpg"
    assert formats.open_classification(out, "train", image_size=8)[1][1] == 1


def test_inat_bad_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archives = fake_inat(tmp_path, "2021")
    raw = tmp_path / "raw"
    for archive in archives.values():
        with tarfile.open(archive) as tar:
            tar.extractall(raw, filter="data")
    out = tmp_path / "out" / "inat21"
    (raw / "val.json").rename(raw / "val.json.bak")
    rc, err = prepare_path(capsys, "inat21", raw, out)
    assert rc == 1 and str(raw / "val.json") in err
    coco = json.loads((raw / "val.json.bak").read_text())
    coco["annotations"].pop()
    (raw / "val.json").write_text(json.dumps(coco))
    rc, err = prepare_path(capsys, "inat21", raw, out)
    assert rc == 1 and str(raw / "val.json") in err and "no annotation" in err
    coco = json.loads((raw / "val.json.bak").read_text())
    del coco["categories"]
    (raw / "val.json").write_text(json.dumps(coco))
    rc, err = prepare_path(capsys, "inat21", raw, out)
    assert rc == 1 and str(raw / "val.json") in err and "categories" in err
    (raw / "val.json.bak").rename(raw / "val.json")
    victim = raw / json.loads((raw / "train.json").read_text())["images"][1]["file_name"]
    victim.unlink()
    rc, err = prepare_path(capsys, "inat21", raw, out)
    assert rc == 1 and str(victim) in err and not out.exists()


# --------------------------------------------------------------------------- Places365


def fake_places_filelist(tmp_path: Path) -> dict[str, Path]:
    """Devkit tar (flat file lists) + train_256 tar (data_256/) + val_256 tar, the official format."""
    src = tmp_path / "places_src"
    devkit = src / "devkit"
    devkit.mkdir(parents=True)
    (devkit / "categories_places365.txt").write_text("/a/airfield 0\n/a/apartment_building/outdoor 1\n/b/beach 2\n")
    train_lines = [
        "/a/airfield/00000001.jpg 0",
        "/a/apartment_building/outdoor/00000001.jpg 1",
        "/b/beach/00000001.jpg 2",
    ]
    (devkit / "places365_train_standard.txt").write_text("\n".join(train_lines) + "\n")
    (devkit / "places365_val.txt").write_text("Places365_val_00000001.jpg 2\nPlaces365_val_00000002.jpg 0\n")
    for i, line in enumerate(train_lines):
        save_jpeg(src / "data_256" / line.split()[0].lstrip("/"), i)
    for i in (1, 2):
        save_jpeg(src / "val_256" / f"Places365_val_{i:08d}.jpg", 10 + i)
    dev = tmp_path / "filelist_places365-standard.tar"
    with tarfile.open(dev, "w") as tar:
        for f in sorted(devkit.iterdir()):
            tar.add(f, arcname=f.name)
    out = {dev.name: dev}
    for folder, name in (("data_256", "train_256_places365standard.tar"), ("val_256", "val_256.tar")):
        with tarfile.open(tmp_path / name, "w") as tar:
            tar.add(src / folder, arcname=folder)
        out[name] = tmp_path / name
    return out


def test_places365_download_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_fake_archives(monkeypatch, "places365", fake_places_filelist(tmp_path))
    rc, err = prepare_download(capsys, "places365", tmp_path)
    assert rc == 0, err
    out = tmp_path / "out" / "places365"
    meta = formats.read_meta(out)
    assert meta["classes"] == ["airfield", "apartment_building/outdoor", "beach"]
    assert index_rows(out, "val") == [
        ("val_256/Places365_val_00000001.jpg", 2),
        ("val_256/Places365_val_00000002.jpg", 0),
    ]
    assert index_rows(out, "train")[1] == ("data_256/a/apartment_building/outdoor/00000001.jpg", 1)
    extracted = tmp_path / "dl" / "extracted"
    rc, err = prepare_path(capsys, "places365", extracted, tmp_path / "out" / "p1", "train_dir=data_256")
    assert rc == 0, err
    rc, err = prepare_path(capsys, "places365", extracted, tmp_path / "out" / "p1", "val_dir=../elsewhere")
    assert rc == 1 and "val_dir" in err
    # A file list naming an absent image: named.
    victim = extracted / "val_256" / "Places365_val_00000002.jpg"
    victim.unlink()
    rc, err = prepare_path(capsys, "places365", extracted, tmp_path / "out" / "p2")
    assert rc == 1 and str(victim) in err


def test_places365_easy_format_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    easy = tmp_path / "raw" / "places365_standard"
    for split in ("train", "val"):
        for i, c in enumerate(("airfield", "beach")):
            save_jpeg(easy / split / c / f"{i}.jpg", i)
    out = tmp_path / "out" / "places"
    rc, err = prepare_path(capsys, "places365", tmp_path / "raw", out)
    assert rc == 0, err
    assert formats.read_meta(out)["classes"] == ["airfield", "beach"]
    assert formats.read_meta(out)["splits"] == {"train": 2, "val": 2}
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = prepare_path(capsys, "places365", empty, tmp_path / "out" / "none")
    assert rc == 1 and "categories_places365.txt" in err and str(empty) in err


# --------------------------------------------------------------------------- Kaggle


def fake_retinopathy(root: Path, with_test: bool = True) -> Path:
    """Kaggle layout: trainLabels.csv + train/*.jpeg; retinopathy_solution.csv + test/*.jpeg."""
    (root / "train").mkdir(parents=True)
    (root / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,0\n13_left,4\n15_right,2\n")
    for i, stem in enumerate(("10_left", "10_right", "13_left", "15_right")):
        save_jpeg(root / "train" / f"{stem}.jpeg", i)
    if with_test:
        (root / "retinopathy_solution.csv").write_text(
            "image,level,Usage\n1_left,0,Private\n1_right,1,Public\n2_left,3,Private\n"
        )
        for i, stem in enumerate(("1_left", "1_right", "2_left")):
            save_jpeg(root / "test" / f"{stem}.jpeg", 10 + i)
    return root


def test_retinopathy_kaggle_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_retinopathy(tmp_path / "dr")
    out = tmp_path / "out" / "retinopathy"
    rc, err = prepare_path(capsys, "retinopathy", root, out, source="manual")
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["num_classes"] == 5 and meta["splits"] == {"train": 4, "val": 1, "test": 2}
    assert index_rows(out, "train") == [
        ("train/10_left.jpeg", 0),
        ("train/10_right.jpeg", 0),
        ("train/13_left.jpeg", 4),
        ("train/15_right.jpeg", 2),
    ]
    assert index_rows(out, "val") == [("test/1_right.jpeg", 1)]
    assert index_rows(out, "test") == [("test/1_left.jpeg", 0), ("test/2_left.jpeg", 3)]


def test_retinopathy_missing_parts_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_retinopathy(tmp_path / "dr", with_test=False)
    out = tmp_path / "out" / "retinopathy"
    rc, err = prepare_path(capsys, "retinopathy", root, out, source="manual")
    assert rc == 1 and str(root / "retinopathy_solution.csv") in err and str(root / "test") in err
    assert "kaggle.com" in err and len(err.strip().splitlines()) == 1
    rc, err = prepare_path(capsys, "retinopathy", root, out, "splits=train", source="manual")
    assert rc == 0, err
    assert formats.read_meta(out)["splits"] == {"train": 4}
    # A zipped label file gets a hint; a bad grade and a missing image are named.
    (root / "trainLabels.csv").rename(root / "trainLabels.csv.zip")
    rc, err = prepare_path(capsys, "retinopathy", root, tmp_path / "o2", "splits=train", source="manual")
    assert rc == 1 and f"unzip {root / 'trainLabels.csv.zip'}" in err
    (root / "trainLabels.csv").write_text("image,level\n10_left,7\n")
    rc, err = prepare_path(capsys, "retinopathy", root, tmp_path / "o2", "splits=train", source="manual")
    assert rc == 1 and str(root / "trainLabels.csv") in err and "'7'" in err
    (root / "trainLabels.csv").write_text("image,level\n99_left,1\n")
    rc, err = prepare_path(capsys, "retinopathy", root, tmp_path / "o2", "splits=train", source="manual")
    assert rc == 1 and str(root / "train" / "99_left.jpeg") in err
    assert formats.read_meta(out)["splits"] == {"train": 4}  # the good preparation is untouched


def fake_pbn(root: Path) -> Path:
    """Kaggle layout: train_info.csv + train/*.jpg; all_data_info.csv + test/*.jpg."""
    (root / "train").mkdir(parents=True)
    (root / "train_info.csv").write_text(
        "filename,artist,title,style,genre,date\n"
        "102257.jpg,5b39c876740bfc1cfaf544721c43cac3,Uriel,Color Field Painting,abstract,1955.0\n"
        '75232.jpg,5b39c876740bfc1cfaf544721c43cac3,"Vir, Heroicus",Color Field Painting,abstract,\n'
        "29855.jpg,96e5bc98488ed589b9bf17ad9fd09371,Night,,landscape,\n"
    )
    for i, f in enumerate(("102257.jpg", "75232.jpg", "29855.jpg")):
        save_jpeg(root / "train" / f, i)
    (root / "all_data_info.csv").write_text(
        "artist,date,genre,pixelsx,pixelsy,size_bytes,source,style,title,artist_group,in_train,new_filename\n"
        "A,1900,portrait,20,12,100,wikiart,Impressionism,T,train_only,True,102257.jpg\n"
        "B,1910,landscape,20,12,100,wikiart,Cubism,U,test_only,False,1.jpg\n"
    )
    save_jpeg(root / "test" / "1.jpg", 9)
    return root


def test_pbn_kaggle_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_pbn(tmp_path / "pbn")
    out = tmp_path / "out" / "pbn"
    rc, err = prepare_path(capsys, "pbn", root, out, source="manual")
    assert rc == 0, err
    meta = formats.read_meta(out)
    assert meta["classes"] == ["Color Field Painting", "unknown"] and meta["splits"] == {"train": 3}
    assert index_rows(out, "train") == [("train/102257.jpg", 0), ("train/75232.jpg", 0), ("train/29855.jpg", 1)]
    out2 = tmp_path / "out" / "pbn_artist"
    rc, err = prepare_path(capsys, "pbn", root, out2, "label=genre", "splits=train,test", source="manual")
    assert rc == 0, err
    meta = formats.read_meta(out2)
    assert meta["classes"] == ["abstract", "landscape"] and meta["splits"] == {"train": 3, "test": 1}
    assert index_rows(out2, "test") == [("test/1.jpg", 1)]


def test_pbn_missing_and_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "pbn"
    root.mkdir()
    rc, err = prepare_path(capsys, "pbn", root, tmp_path / "o", source="manual")
    assert rc == 1 and str(root / "train_info.csv") in err and str(root / "train") in err and "kaggle" in err
    fake_pbn(root)
    corrupt = root / "train" / "75232.jpg"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    rc, err = prepare_path(capsys, "pbn", root, tmp_path / "o", source="manual")
    assert rc == 1 and str(corrupt) in err and "corrupt image" in err
    rc, err = prepare_path(capsys, "pbn", root, tmp_path / "o", "label=title", source="manual")
    assert rc == 1 and "label=title" in err


def test_every_new_source_is_prepared() -> None:
    """The datasets the paper tables name have a real preparer and the right kind."""
    kinds = {
        "flowers102": "download",
        "caltech101": "download",
        "sun397": "download",
        "imagenet_1pct": "manual",
        "inat18": "download",
        "inat21": "download",
        "places365": "download",
        "retinopathy": "manual",
        "pbn": "manual",
    }
    for name, kind in kinds.items():
        spec = sources.SOURCES[name]
        assert spec.kind == kind and spec.preparer in sources.PREPARERS, name
        assert all(r.md5 or r.sha256 or r.filename == "1percent.txt" for r in spec.resources), name

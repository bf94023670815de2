"""Preparers of the transfer-evaluation, iNaturalist, Places365 and Kaggle datasets.

Each reads its publisher's own release layout (the files the archives in
:data:`sslaug.data.sources.SOURCES` extract to, or the user's copy) and writes the
imagefolder index of :mod:`sslaug.data.formats`. They are registered in
``sources.PREPARERS`` under the keys of :data:`PREPARERS`.

Splits follow the protocol the papers' transfer evaluations use: SimCLR's, that is
Kornblith et al. 2019 ("Do Better ImageNet Models Transfer Better?"), the SimCLR
ImageNet 1% subset, and the official splits elsewhere (see each docstring).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sslaug.data.formats import DataError, write_meta
from sslaug.data.sources import (
    PrepContext,
    _int_option,
    _list_images,
    _load_json,
    _locate,
    _read_lines,
    _write_rows,
    fetch,
    prepare_imagefolder,
)
from sslaug.io import atomic_dir, sha256sum

# --------------------------------------------------------------------------- helpers


def _first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def _require(paths: Sequence[Path], what: str, instructions: str = "") -> None:
    """One error listing every missing file or folder of ``paths``."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        hint = f"; {instructions}" if instructions else ""
        raise DataError(f"{what}: missing {', '.join(missing)}{hint}")


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header that must contain ``columns``."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        absent = [c for c in columns if c not in header]
        if absent:
            raise DataError(f"{path}: column(s) {', '.join(absent)} missing (header: {','.join(header)})")
        return list(reader)


def _selected_splits(ctx: PrepContext, default: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """``--option splits=a,b`` restricted to ``allowed``; ``default`` when unset."""
    splits = [s for s in ctx.options.get("splits", ",".join(default)).split(",") if s]
    unknown = [s for s in splits if s not in allowed]
    if unknown or not splits:
        raise DataError(f"--option splits={ctx.options.get('splits')}: expected some of {', '.join(allowed)}")
    return splits


# --------------------------------------------------------------------------- Oxford Flowers-102


def _load_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Integer vectors ``keys`` of a MATLAB v5 file (the Flowers-102 label and split files)."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    from scipy.io import loadmat  # lazy: only Flowers-102 needs scipy
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, squeeze_me=True)
    except (MatReadError, ValueError, TypeError, OSError) as err:
        raise DataError(f"not a MATLAB file: {path} ({err})") from err
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"{path}: variable(s) {', '.join(missing)} missing")
    try:
        return {k: np.atleast_1d(np.asarray(mat[k])).astype(np.int64) for k in keys}
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: expected integer vectors {', '.join(keys)} ({err})") from err


def prepare_flowers102(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Oxford Flowers-102: ``jpg/image_NNNNN.jpg``, ``imagelabels.mat`` (labels 1..102) and
    ``setid.mat`` (1-based image ids ``trnid``, ``valid``, ``tstid``).

    Splits train (1,020), val (1,020), test (6,149) and trainval = train + val, the
    2,040 training images of Kornblith et al.'s protocol. Class names are
    torchvision's (the release itself has none).
    """
    from torchvision.datasets import Flowers102

    base = _locate(raw, "flowers-102", "setid.mat", ctx.name)
    labels_path, setid_path = base / "imagelabels.mat", base / "setid.mat"
    labels = _load_mat(labels_path, ["labels"])["labels"]
    ids = _load_mat(setid_path, ["trnid", "valid", "tstid"])
    classes = list(Flowers102.classes)
    if labels.min(initial=1) < 1 or labels.max(initial=1) > len(classes):
        raise DataError(f"{labels_path}: labels outside 1..{len(classes)}")

    def rows(image_ids: np.ndarray) -> list[tuple[Path, str]]:
        bad = [int(i) for i in image_ids if not 1 <= i <= len(labels)]
        if bad:
            raise DataError(f"{setid_path}: image id {bad[0]} outside the {len(labels)} ids of {labels_path}")
        return [(base / "jpg" / f"image_{i:05d}.jpg", classes[labels[i - 1] - 1]) for i in image_ids]

    splits = {"train": rows(ids["trnid"]), "val": rows(ids["valid"]), "test": rows(ids["tstid"])}
    splits["trainval"] = splits["train"] + splits["val"]
    return _write_rows(out, ctx, base, classes, splits)


# --------------------------------------------------------------------------- Caltech-101


def _caltech_categories(raw: Path) -> Path:
    """``101_ObjectCategories/`` of a Caltech-101 copy, extracting the inner tarball once if needed.

    The release zip holds ``caltech-101/101_ObjectCategories.tar.gz`` (and Annotations.tar);
    the tarball is extracted next to itself, atomically, and reused on later runs.
    """
    if raw.name == "101_ObjectCategories":
        return raw
    layouts = (raw, raw / "caltech-101", raw / "caltech101")
    found = _first_existing(d / "101_ObjectCategories" for d in layouts)
    if found is not None:
        return found
    tarball = _first_existing(d / "101_ObjectCategories.tar.gz" for d in layouts)
    if tarball is None:
        raise DataError(
            f"{raw}: no 101_ObjectCategories/ nor caltech-101/101_ObjectCategories.tar.gz; "
            "is this an extracted caltech101 copy (caltech-101.zip from data.caltech.edu)?"
        )
    from torchvision.datasets.utils import extract_archive

    dest = tarball.parent / "101_ObjectCategories"
    with atomic_dir(dest) as tmp:
        extract_archive(str(tarball), str(tmp))
        inner = tmp / "101_ObjectCategories"
        if not inner.is_dir():
            raise DataError(f"{tarball}: no 101_ObjectCategories/ folder inside")
        for child in inner.iterdir():
            child.rename(tmp / child.name)
        inner.rmdir()
    return dest


def prepare_caltech101(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Caltech-101 with Kornblith et al.'s split: 30 random images per class train, the rest test.

    There is no official split. Kornblith et al. (and SimCLR, whose transfer protocol the
    Rescue paper follows) draw 30 training images per class and test on the rest, over
    102 classes including ``BACKGROUND_Google`` (their 3,060 / 6,084 images); TFDS does
    the same. ``--option background=exclude`` drops that class (101 classes, as
    torchvision). The draw is seeded (``--option split_seed``, default 0) over sorted file
    names, so it is the same on every machine; ``--option train_per_class`` changes 30.
    """
    categories = _caltech_categories(raw)
    per_class = _int_option(ctx, "train_per_class", 30)
    background = ctx.options.get("background", "include")
    if background not in ("include", "exclude"):
        raise DataError(f"--option background={background}: expected include or exclude")
    classes = sorted(d.name for d in categories.iterdir() if d.is_dir())
    if background == "exclude":
        classes = [c for c in classes if c != "BACKGROUND_Google"]
    if not classes:
        raise DataError(f"no class folders in {categories}")
    rng = np.random.default_rng(_int_option(ctx, "split_seed", 0))
    train: list[tuple[Path, str]] = []
    test: list[tuple[Path, str]] = []
    for c in classes:
        images = _list_images(categories / c)
        if len(images) <= per_class:
            raise DataError(
                f"class directory {categories / c} has {len(images)} images: "
                f"train_per_class={per_class} leaves none to test"
            )
        picked = set(rng.choice(len(images), per_class, replace=False).tolist())
        train.extend((p, c) for i, p in enumerate(images) if i in picked)
        test.extend((p, c) for i, p in enumerate(images) if i not in picked)
    return _write_rows(out, ctx, categories, classes, {"train": train, "test": test})


# --------------------------------------------------------------------------- SUN397


def _sun_category(entry: str) -> str:
    """``/a/apartment_building/outdoor[/sun_x.jpg]`` -> ``apartment_building/outdoor`` (drop the letter folder)."""
    parts = entry.strip().strip("/").split("/")
    return "/".join(parts[1:-1] if parts[-1].endswith(".jpg") else parts[1:])


def prepare_sun397(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """SUN397 with the official partitions: ``Training_NN.txt`` / ``Testing_NN.txt`` (50 + 50 per class).

    Kornblith et al. use the first of the 10 partitions (``--option partition=1``,
    the default): 19,850 training and 19,850 test images over 397 classes listed in
    ``ClassName.txt``. Partition files list ``/<letter>/<category>/<image>.jpg``
    relative to the ``SUN397/`` image folder.
    """
    part = _int_option(ctx, "partition", 1)
    if not 1 <= part <= 10:
        raise DataError(f"--option partition={part}: SUN397 has partitions 1..10")
    images = _locate(raw, "SUN397", "a", ctx.name)
    names = (f"Training_{part:02d}.txt", f"Testing_{part:02d}.txt", "ClassName.txt")
    part_dir = _first_existing(d for d in (raw, raw / "Partitions", images) if (d / names[0]).is_file())
    if part_dir is None:
        raise DataError(
            f"{raw}: no {names[0]} (nor Partitions/{names[0]}); extract Partitions.zip "
            "(vision.princeton.edu/projects/2010/SUN/download/Partitions.zip) next to SUN397/"
        )
    class_file = _first_existing(d / names[2] for d in (part_dir, images))
    if class_file is None:
        raise DataError(f"file not found: {part_dir / names[2]}")
    classes = [_sun_category(line) for line in _read_lines(class_file)]
    known = set(classes)
    splits = {}
    for split, fname in (("train", names[0]), ("test", names[1])):
        rows = []
        for entry in _read_lines(part_dir / fname):
            category = _sun_category(entry)
            if category not in known:
                raise DataError(f"{part_dir / fname}: {entry!r} is in no class of {class_file}")
            rows.append((images / entry.lstrip("/"), category))
        splits[split] = rows
    return _write_rows(out, ctx, images, classes, splits)


# --------------------------------------------------------------------------- ImageNet 1%

_IMAGENET_TRAIN_NAME = re.compile(r"^(n\d{8})_\d+\.JPEG$")


def _subset_file(ctx: PrepContext) -> Path:
    """``--option subset=FILE``, else the spec's subset list fetched into the download directory."""
    if "subset" in ctx.options:
        path = Path(ctx.options["subset"])
        if not path.is_file():
            raise DataError(f"--option subset={path}: file not found")
        return path
    if not ctx.spec.resources or ctx.download_dir is None:
        raise DataError(f"{ctx.name}: no subset list; pass --option subset=FILE")
    return fetch(ctx.spec.resources[0], ctx.download_dir)


def prepare_imagenet_subset(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """ImageNet 1% (SimCLR's ``imagenet_subsets/1percent.txt``): train = the listed images, val = all of val.

    ``raw`` is the ImageNet copy (``train/`` and ``val/`` wnid folders); the list
    (``n01440764_10026.JPEG`` per line) is downloaded like an archive, or given with
    ``--option subset=FILE`` (e.g. SimCLR's 10percent.txt). Its sha256 is recorded in
    meta.json, as its publisher gives no checksum.
    """
    _require([raw / "train", raw / "val"], f"{ctx.name} (an ImageNet copy)", ctx.spec.instructions)
    subset = _subset_file(ctx)
    classes = sorted(d.name for d in (raw / "train").iterdir() if d.is_dir())
    known = set(classes)
    train, seen = [], set()
    for n, name in enumerate(_read_lines(subset), start=1):
        match = _IMAGENET_TRAIN_NAME.match(name)
        if match is None:
            raise DataError(f"{subset}: line {n}: {name!r} is not an ImageNet training file name (wnid_N.JPEG)")
        if name in seen:
            raise DataError(f"{subset}: line {n}: {name} listed twice")
        wnid = match.group(1)
        if wnid not in known:
            raise DataError(f"{subset}: line {n}: class directory missing: {raw / 'train' / wnid}")
        seen.add(name)
        train.append((raw / "train" / wnid / name, wnid))
    val = []
    for c in classes:
        images = _list_images(raw / "val" / c)
        if not images:
            raise DataError(f"class directory missing or empty: {raw / 'val' / c}")
        val.extend((p, c) for p in images)
    meta = _write_rows(out, ctx, raw, classes, {"train": train, "val": val})
    meta["subset"] = {"file": str(subset.resolve()), "sha256": sha256sum(subset), "images": len(train)}
    write_meta(out, meta)
    return meta


# --------------------------------------------------------------------------- iNaturalist

# Annotation files of each release (COCO-style JSON with images, annotations, categories).
INAT_ANNOTATIONS = {"2018": ("train2018.json", "val2018.json"), "2021": ("train.json", "val.json")}


def _inat_split(path: Path, base: Path) -> tuple[dict[int, str], list[tuple[Path, int]]]:
    """(category id -> name, [(image path, category id)]) of one iNaturalist annotation file."""
    coco = _load_json(path)
    try:
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        labels = {int(a["image_id"]): int(a["category_id"]) for a in coco["annotations"]}
        images = [(int(im["id"]), str(im["file_name"])) for im in coco["images"]]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"not an iNaturalist annotation file: {path} (missing or bad {err})") from err
    rows = []
    for image_id, file_name in images:
        if image_id not in labels:
            raise DataError(f"{path}: image {image_id} ({file_name}) has no annotation")
        if labels[image_id] not in categories:
            raise DataError(f"{path}: image {image_id} has unknown category {labels[image_id]}")
        rows.append((base / file_name, labels[image_id]))
    return categories, rows


def prepare_inat(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """iNaturalist 2018 / 2021 (``--option year``) from the release's annotation JSON files.

    ``train2018.json`` / ``val2018.json`` (2021: ``train.json`` / ``val.json``) list
    images (``file_name`` relative to the folder holding the JSON files) and one
    species per image; splits train and val (the competitions' test labels are not
    public). Classes are the species sorted by category id. ``--option train_json=``
    / ``val_json=`` pick other files, e.g. 2021's ``train_mini.json``.
    """
    year = ctx.options.get("year", "")
    if year not in INAT_ANNOTATIONS:
        raise DataError(f"--option year={year}: expected one of {', '.join(INAT_ANNOTATIONS)}")
    files = {
        "train": ctx.options.get("train_json", INAT_ANNOTATIONS[year][0]),
        "val": ctx.options.get("val_json", INAT_ANNOTATIONS[year][1]),
    }
    base = _locate(raw, f"inat{year}", files["train"], ctx.name)
    categories: dict[int, str] = {}
    per_split = {}
    for split, fname in files.items():
        cats, rows = _inat_split(base / fname, base)
        clash = [i for i in cats if i in categories and categories[i] != cats[i]]
        if clash:
            raise DataError(f"{base / fname}: category {clash[0]} is named differently in {files['train']}")
        categories.update(cats)
        per_split[split] = rows
    ids = sorted(categories)
    names = [categories[i] for i in ids]
    if len(set(names)) < len(names):  # class names must be unique: fall back to the ids
        names = [str(i) for i in ids]
    name_of = dict(zip(ids, names))
    splits = {split: [(p, name_of[c]) for p, c in rows] for split, rows in per_split.items()}
    return _write_rows(out, ctx, base, names, splits)


# --------------------------------------------------------------------------- Places365

_PLACES_TRAIN_DIRS = ("data_256_standard", "data_256", "data_large_standard", "data_large")
_PLACES_VAL_DIRS = ("val_256", "val_large")


def _places_dir(base: Path, ctx: PrepContext, key: str, candidates: Sequence[str]) -> Path:
    if key in ctx.options:
        rel = Path(ctx.options[key])
        if rel.is_absolute() or ".." in rel.parts:  # the index stores paths relative to base
            raise DataError(f"--option {key}={rel}: expected a folder name under {base}")
        path = base / rel
        if not path.is_dir():
            raise DataError(f"--option {key}: directory missing: {path}")
        return path
    found = _first_existing(base / c for c in candidates)
    if found is None:
        raise DataError(f"{base}: no image folder ({' or '.join(candidates)}); {ctx.spec.instructions}")
    return found


def prepare_places365(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Places365-Standard from the official file lists, or the "easy format" class folders.

    Official layout (the devkit ``filelist_places365-standard.tar`` and the image
    archives): ``categories_places365.txt`` (``/a/airfield 0``),
    ``places365_train_standard.txt`` (``/a/airfield/00000001.jpg 0``, relative to
    ``data_256/``) and ``places365_val.txt`` (``Places365_val_00000001.jpg 165``,
    relative to ``val_256/``); the ``_large`` folders work too. Splits train and val
    (test labels are not public). A ``places365_standard/{train,val}/<class>/`` copy
    (the easy-format archive) is read as class folders instead.
    """
    base = _first_existing(d for d in (raw, raw / "places365") if (d / "categories_places365.txt").is_file())
    if base is None:
        easy = _first_existing(d for d in (raw / "places365_standard", raw) if (d / "train").is_dir())
        if easy is not None:
            ctx.options.setdefault("splits", "train,val")
            return prepare_imagefolder(easy, out, ctx, required=("train", "val"))
        raise DataError(f"{raw}: no categories_places365.txt (nor places365_standard/train/); {ctx.spec.instructions}")
    by_index: dict[int, str] = {}
    for line in _read_lines(base / "categories_places365.txt"):
        try:
            name, index = line.split()
            by_index[int(index)] = name.strip("/")[2:]  # "/a/airfield" -> "airfield"
        except ValueError:
            raise DataError(f"{base / 'categories_places365.txt'}: bad line {line!r}") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{base / 'categories_places365.txt'}: class indices are not 0..{len(by_index) - 1}")
    classes = [by_index[i] for i in range(len(by_index))]
    splits = {}
    for split, list_name, folder in (
        ("train", "places365_train_standard.txt", _places_dir(base, ctx, "train_dir", _PLACES_TRAIN_DIRS)),
        ("val", "places365_val.txt", _places_dir(base, ctx, "val_dir", _PLACES_VAL_DIRS)),
    ):
        rows = []
        for line in _read_lines(base / list_name):
            try:
                rel, index = line.split()
                rows.append((folder / rel.lstrip("/"), classes[int(index)]))
            except (ValueError, IndexError):
                raise DataError(f"{base / list_name}: bad line {line!r}") from None
        splits[split] = rows
    return _write_rows(out, ctx, base, classes, splits)


# --------------------------------------------------------------------------- Kaggle

# Diabetic Retinopathy grades (the competition's ``level`` column, 0..4).
RETINOPATHY_GRADES = ("0_no_dr", "1_mild", "2_moderate", "3_severe", "4_proliferative_dr")


def prepare_retinopathy(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Kaggle Diabetic Retinopathy Detection: ``trainLabels.csv`` + ``train/<image>.jpeg``.

    Splits as TFDS ``diabetic_retinopathy_detection``: train (35,126 images,
    trainLabels.csv); val and test from the released ``retinopathy_solution.csv``
    (columns image, level, Usage) over ``test/``: Usage ``Public`` (10,906) and
    ``Private`` (42,670). ``--option splits=train`` needs only the training part (a
    style source). Classes are the 5 grades.
    """
    base = _first_existing(d for d in (raw, raw / "diabetic-retinopathy-detection") if (d / "train").is_dir()) or raw
    splits = _selected_splits(ctx, ("train", "val", "test"), ("train", "val", "test"))
    needed = [base / "trainLabels.csv", base / "train"] if "train" in splits else []
    if {"val", "test"} & set(splits):
        needed += [base / "retinopathy_solution.csv", base / "test"]
    hint = ctx.spec.instructions
    if not (base / "trainLabels.csv").exists() and (base / "trainLabels.csv.zip").exists():
        hint = f"unzip {base / 'trainLabels.csv.zip'}; {hint}"
    _require(needed, "Diabetic Retinopathy", hint)

    def rows(csv_path: Path, folder: Path, usage: str | None) -> list[tuple[Path, str]]:
        columns = ("image", "level", "Usage") if usage else ("image", "level")
        out_rows = []
        for row in _read_csv(csv_path, columns):
            if usage and row["Usage"] != usage:
                continue
            try:
                grade = RETINOPATHY_GRADES[int(row["level"])]
            except (ValueError, IndexError):
                raise DataError(f"{csv_path}: image {row['image']}: level {row['level']!r} is not 0..4") from None
            out_rows.append((folder / f"{row['image']}.jpeg", grade))
        return out_rows

    sources = {
        "train": (base / "trainLabels.csv", base / "train", None),
        "val": (base / "retinopathy_solution.csv", base / "test", "Public"),
        "test": (base / "retinopathy_solution.csv", base / "test", "Private"),
    }
    return _write_rows(out, ctx, base, RETINOPATHY_GRADES, {s: rows(*sources[s]) for s in splits})


PBN_LABELS = ("style", "artist", "genre")


def prepare_pbn(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Kaggle Painter by Numbers: ``train_info.csv`` (filename, artist, title, style, genre, date) + ``train/``.

    SASSL uses it as a style source, so only the training images are needed; the
    label is ``--option label=style`` (default; artist or genre also), empty values
    become ``unknown``. ``--option splits=train,test`` adds the test images from
    ``all_data_info.csv`` (rows with in_train False, file ``new_filename``) over ``test/``.
    """
    label = ctx.options.get("label", "style")
    if label not in PBN_LABELS:
        raise DataError(f"--option label={label}: expected one of {', '.join(PBN_LABELS)}")
    base = _first_existing(d for d in (raw, raw / "painter-by-numbers") if (d / "train").is_dir()) or raw
    splits = _selected_splits(ctx, ("train",), ("train", "test"))
    needed = [base / "train_info.csv", base / "train"] if "train" in splits else []
    if "test" in splits:
        needed += [base / "all_data_info.csv", base / "test"]
    _require(needed, "Painter by Numbers", ctx.spec.instructions)
    items: dict[str, list[tuple[Path, str]]] = {}
    if "train" in splits:
        rows = _read_csv(base / "train_info.csv", ("filename", label))
        items["train"] = [(base / "train" / r["filename"], r[label].strip() or "unknown") for r in rows]
    if "test" in splits:
        rows = _read_csv(base / "all_data_info.csv", ("new_filename", "in_train", label))
        items["test"] = [
            (base / "test" / r["new_filename"], r[label].strip() or "unknown")
            for r in rows
            if r["in_train"].strip().lower() == "false"
        ]
    classes = sorted({c for rows in items.values() for _, c in rows})
    return _write_rows(out, ctx, base, classes, items)


PREPARERS = {
    "flowers102": prepare_flowers102,
    "caltech101": prepare_caltech101,
    "sun397": prepare_sun397,
    "imagenet_subset": prepare_imagenet_subset,
    "inat": prepare_inat,
    "places365": prepare_places365,
    "retinopathy": prepare_retinopathy,
    "pbn": prepare_pbn,
}

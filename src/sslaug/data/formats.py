"""Prepared on-disk dataset formats and their loaders.

This module is the contract between the ``prepare_dataset`` rule (which writes a
prepared directory) and the training / evaluation code (which reads it).

Formats (``meta.json["format"]``):

``array``
    Small classification sets and style sets. ``{split}_images.npy`` (uint8,
    N x H x W x 3) and ``{split}_labels.npy`` (int64, N; -1 = unlabeled).
``imagefolder``
    Large classification sets left where the user keeps them. ``{split}_index.csv``
    (columns ``path,label``; ``path`` relative to ``meta["root"]``). Images are decoded
    on the fly. Evaluation (and any reader of :class:`ClassificationDataset`) gets the
    shorter side resized to ``image_size / crop_ratio`` and a centre crop of ``image_size``
    (the papers' test transform is ratio 0.875: 256 -> 224); pretraining crops the full
    image per view where it is decoded (``sslaug.data.crops``).
``coco``
    Detection. ``annotations/instances_{split}.json`` (real COCO JSON) and
    ``images/{split}/`` (PNG/JPEG, possibly a symlink to the user's copy).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sslaug.io import sha256sum

META_FILE = "meta.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
DEFAULT_IMAGEFOLDER_SIZE = 224
#: The papers' evaluation transform: resize the shorter side to 256, centre-crop 224.
EVAL_CROP_RATIO = 224 / 256


class DataError(Exception):
    """Bad, missing or unprepared input data; the message names the offending path."""


class ChecksumError(DataError):
    """A downloaded or user-supplied archive does not match its published checksum."""


class CorruptImageError(DataError):
    """An image file cannot be decoded."""


# --------------------------------------------------------------------------- meta


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``directory/meta.json``; a missing file means the dataset was never prepared."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise DataError(f"dataset not prepared: {path} missing; run rule prepare_dataset")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_meta(directory: Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta.json``; callers build inside a temporary directory, so no temp file here."""
    with open(directory / META_FILE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


def _check_split(meta: Mapping[str, Any], directory: Path, split: str) -> None:
    if split not in meta.get("splits", {}):
        raise DataError(
            f"split {split!r} not in prepared dataset {directory} "
            f"(available: {', '.join(sorted(meta.get('splits', {})))})"
        )


def _check_format(meta: Mapping[str, Any], directory: Path, expected: Sequence[str]) -> None:
    if meta.get("format") not in expected:
        raise DataError(f"{directory / META_FILE}: format {meta.get('format')!r}, expected one of {list(expected)}")


# --------------------------------------------------------------------------- array format


@dataclass
class ArrayDataset:
    """An in-memory array-format dataset: ``splits[name] = (images uint8 NHWC, labels int64)``.

    ``extra`` holds additional meta.json keys (e.g. how a style set was generated).
    """

    name: str
    classes: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    extra: dict[str, Any] = field(default_factory=dict)


def array_paths(directory: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) ``.npy`` paths of one split."""
    return directory / f"{split}_images.npy", directory / f"{split}_labels.npy"


def save_array_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Validate and save one split's arrays (the meta is written by :func:`finish_array_meta`)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{split}: images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{split}: {labels.shape[0]} labels for {images.shape[0]} images")
    img_path, lab_path = array_paths(directory, split)
    np.save(img_path, np.ascontiguousarray(images))
    np.save(lab_path, labels.astype(np.int64))


def finish_array_meta(
    directory: Path,
    name: str,
    classes: Sequence[str],
    splits: Sequence[str],
    source: Any,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``meta.json`` for splits already saved in ``directory`` (sizes read back, hashed)."""
    counts: dict[str, int] = {}
    sizes: set[tuple[int, int]] = set()
    hashes: dict[str, str] = {}
    for split in splits:
        img_path, lab_path = array_paths(directory, split)
        images = np.load(img_path, mmap_mode="r")
        counts[split] = int(images.shape[0])
        sizes.add((int(images.shape[1]), int(images.shape[2])))
        for p in (img_path, lab_path):
            hashes[p.name] = sha256sum(p)
    if len(sizes) != 1:
        raise ValueError(f"{name}: splits have different image sizes {sorted(sizes)}")
    meta = {
        "format": "array",
        "name": name,
        "num_classes": len(classes),
        "classes": list(classes),
        "image_size": list(sizes.pop()),
        "splits": counts,
        "source": source,
        "sha256": hashes,
        **(extra or {}),
    }
    write_meta(directory, meta)
    return meta


def write_array_dataset(directory: Path, ds: ArrayDataset, source: Any) -> dict[str, Any]:
    """Write a whole :class:`ArrayDataset` (arrays + meta) into ``directory``."""
    for split, (images, labels) in ds.splits.items():
        save_array_split(directory, split, images, labels)
    return finish_array_meta(directory, ds.name, ds.classes, list(ds.splits), source, ds.extra)


def load_array_split(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC, memory-mapped read-only) and labels (int64) of one split."""
    directory = Path(directory)
    meta = read_meta(directory)
    _check_format(meta, directory, ["array"])
    _check_split(meta, directory, split)
    img_path, lab_path = array_paths(directory, split)
    for p in (img_path, lab_path):
        if not p.is_file():
            raise DataError(f"prepared dataset incomplete: {p} missing; re-run rule prepare_dataset")
    return np.load(img_path, mmap_mode="r"), np.load(lab_path).astype(np.int64, copy=False)


# --------------------------------------------------------------------------- imagefolder format


def write_imagefolder_dataset(
    directory: Path,
    name: str,
    root: Path,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[tuple[str, int]]],
    source: Any,
    image_size: int = DEFAULT_IMAGEFOLDER_SIZE,
) -> dict[str, Any]:
    """Write ``{split}_index.csv`` files and the meta of an imagefolder dataset."""
    hashes = {}
    for split, rows in splits.items():
        path = directory / f"{split}_index.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(rows)
        hashes[path.name] = sha256sum(path)
    meta = {
        "format": "imagefolder",
        "name": name,
        "root": str(Path(root).resolve()),
        "num_classes": len(classes),
        "classes": list(classes),
        "image_size": [image_size, image_size],
        "splits": {split: len(rows) for split, rows in splits.items()},
        "source": source,
        "sha256": hashes,
    }
    write_meta(directory, meta)
    return meta


def read_imagefolder_index(directory: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Relative paths and int64 labels of one imagefolder split."""
    path = directory / f"{split}_index.csv"
    if not path.is_file():
        raise DataError(f"prepared dataset incomplete: {path} missing; re-run rule prepare_dataset")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["path", "label"]:
            raise DataError(f"{path}: expected header 'path,label', got {header}")
        rows = list(reader)
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows], dtype=np.int64)


def check_image_file(path: Path, full: bool = False) -> None:
    """Raise :class:`CorruptImageError` naming ``path`` if it is not a readable image.

    By default only the header is parsed (cheap enough for ImageNet's 1.3M files);
    ``full=True`` decodes all pixels, which also catches truncated files.
    """
    try:
        with Image.open(path) as im:
            if full:
                im.load()
            else:
                im.size  # noqa: B018 - parsing the header is the check
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"corrupt image file: {path} ({err})") from err


def decode_resize_crop(path: Path, size: int, crop_ratio: float = 1.0) -> torch.Tensor:
    """Decode ``path`` to RGB, resize the shorter side to ``round(size / crop_ratio)``,
    centre-crop a ``size`` square (``crop_ratio`` 0.875: the papers' 256 -> 224 test view).

    Returns a uint8 tensor 3 x size x size. The error names the file, because one bad
    file among a million otherwise surfaces as an anonymous worker crash.
    """
    if not 0 < crop_ratio <= 1:
        raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    resize = round(size / crop_ratio)
    try:
        with Image.open(path) as im:
            # JPEG draft mode decodes at a reduced scale (>= resize): much faster for big photos.
            im.draft("RGB", (resize, resize))
            im = im.convert("RGB")
            w, h = im.size
            scale = resize / min(w, h)
            new_w, new_h = max(resize, round(w * scale)), max(resize, round(h * scale))
            im = im.resize((new_w, new_h), Image.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"corrupt image file: {path} ({err})") from err
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- classification loader


class ClassificationDataset(Dataset):
    """(uint8 tensor 3 x H x W, int label) pairs from an array or imagefolder dataset.

    Attributes:
        meta: the prepared dataset's meta.json.
        classes / num_classes: class names and count (0 for unlabeled style sets).
        labels: int64 array of all labels (-1 = unlabeled), e.g. for kNN evaluation.
        image_size: output side length (square for imagefolder; stored H x W for arrays
            unless ``image_size`` was given).
        crop_ratio: imagefolder only: the centre crop's share of the resized shorter side
            (1.0: resize to ``image_size``; :data:`EVAL_CROP_RATIO`: the papers' 256 -> 224).
            Array sets are stored at their final resolution and never centre-cropped.
    """

    def __init__(
        self, directory: str | os.PathLike, split: str, image_size: int | None = None, crop_ratio: float = 1.0
    ):
        self.directory = Path(directory)
        self.split = split
        self.meta = read_meta(self.directory)
        _check_format(self.meta, self.directory, ["array", "imagefolder"])
        _check_split(self.meta, self.directory, split)
        self.classes: list[str] = list(self.meta.get("classes", []))
        self.num_classes: int = int(self.meta.get("num_classes", len(self.classes)))
        self.format: str = self.meta["format"]
        self.crop_ratio = crop_ratio
        self._images: np.ndarray | None = None
        if self.format == "array":
            self._images, self.labels = load_array_split(self.directory, split)
            stored_h, stored_w = (int(s) for s in self.meta["image_size"])
            same = image_size is None or image_size == stored_h == stored_w
            self._resize_to: int | None = None if same else image_size
            self.image_size = image_size or stored_h
        else:
            self._root = Path(self.meta["root"])
            self._paths, self.labels = read_imagefolder_index(self.directory, split)
            self.image_size = image_size or int(self.meta.get("image_size", [DEFAULT_IMAGEFOLDER_SIZE])[0])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image_path(self, index: int) -> Path:
        """The file of image ``index`` (imagefolder format only)."""
        if self.format != "imagefolder":
            raise ValueError(f"{self.directory}: {self.format!r} datasets have no image files")
        return self._root / self._paths[index]

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies the whole array (spawned DataLoader workers): reopen instead.
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.labels[index])
        if self.format == "imagefolder":
            return decode_resize_crop(self.image_path(index), self.image_size, self.crop_ratio), label
        if self._images is None:
            self._images = np.load(array_paths(self.directory, self.split)[0], mmap_mode="r")
        # np.array copies out of the read-only memmap (torch warns on non-writable arrays).
        img = torch.from_numpy(np.array(self._images[index])).permute(2, 0, 1).contiguous()
        if self._resize_to is not None:
            img = _resize_square(img, self._resize_to)
        return img, label


def _resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 CHW tensor to size x size (antialiased bilinear)."""
    out = torch.nn.functional.interpolate(
        img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].round().clamp(0, 255).to(torch.uint8)


def open_classification(
    directory: str | os.PathLike, split: str, image_size: int | None = None, crop_ratio: float = 1.0
) -> ClassificationDataset:
    """Open a prepared classification (or style) dataset split; see :class:`ClassificationDataset`."""
    return ClassificationDataset(directory, split, image_size, crop_ratio)


# --------------------------------------------------------------------------- coco format


def coco_ann_path(directory: Path, split: str) -> Path:
    """Path of a split's COCO annotation JSON inside a prepared coco directory."""
    return directory / "annotations" / f"instances_{split}.json"


def write_coco_split(
    directory: Path, split: str, coco: Mapping[str, Any], images: Sequence[tuple[str, np.ndarray]]
) -> None:
    """Write one split's annotation JSON and its images (PNG) into a coco directory."""
    (directory / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir = directory / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    with open(coco_ann_path(directory, split), "w", encoding="utf-8") as f:
        json.dump(coco, f)
    for file_name, array in images:
        Image.fromarray(array).save(image_dir / file_name, format="PNG")


def write_coco_meta(
    directory: Path, name: str, categories: Sequence[Mapping[str, Any]], splits: Mapping[str, int], source: Any
) -> dict[str, Any]:
    """Write the meta of a coco-format dataset (annotation files already in place).

    ``num_classes`` counts categories; ``model_num_classes`` (max category id + 1, the
    background included) is what a torchvision detector needs, since labels are the
    raw COCO category ids (non-contiguous for real COCO: 80 categories, ids up to 90).
    """
    hashes = {}
    for split in splits:
        path = coco_ann_path(directory, split)
        hashes[f"annotations/{path.name}"] = sha256sum(path)
    cats = [dict(c) for c in categories]
    meta = {
        "format": "coco",
        "name": name,
        "num_classes": len(cats),
        "model_num_classes": max((int(c["id"]) for c in cats), default=0) + 1,
        "categories": cats,
        "splits": dict(splits),
        "source": source,
        "sha256": hashes,
    }
    write_meta(directory, meta)
    return meta


class CocoDetection(Dataset):
    """(float image 3 x H x W in [0, 1], target) pairs for torchvision detection models.

    ``target`` has ``boxes`` (float32 N x 4, xyxy pixels), ``labels`` (int64 COCO
    category ids), ``image_id`` (int), ``area`` and ``iscrowd``. Crowd regions and
    degenerate boxes are dropped from training targets, as in torchvision's reference
    scripts; evaluation should use :attr:`ann_path` with pycocotools, which handles them.
    """

    def __init__(self, directory: str | os.PathLike, split: str):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        _check_format(self.meta, self.directory, ["coco"])
        _check_split(self.meta, self.directory, split)
        self.ann_path = coco_ann_path(self.directory, split)
        self.image_dir = self.directory / "images" / split
        with open(self.ann_path, encoding="utf-8") as f:
            coco = json.load(f)
        self.images: list[dict[str, Any]] = sorted(coco["images"], key=lambda im: im["id"])
        self.categories: list[dict[str, Any]] = coco["categories"]
        self._anns: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for ann in coco["annotations"]:
            self._anns.setdefault(ann["image_id"], []).append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError) as err:
            raise CorruptImageError(f"corrupt image file: {path} ({err})") from err
        image = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return image, self._target(info, arr.shape[1], arr.shape[0])

    def _target(self, info: Mapping[str, Any], width: int, height: int) -> dict[str, Any]:
        boxes, labels, areas = [], [], []
        for ann in self._anns.get(info["id"], []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(width), x + w), min(float(height), y + h)
            if x1 <= x0 or y1 <= y0:
                continue
            boxes.append([x0, y0, x1, y1])
            labels.append(int(ann["category_id"]))
            areas.append(float(ann.get("area", w * h)))
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": int(info["id"]),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
        }


def open_coco(directory: str | os.PathLike, split: str) -> tuple[CocoDetection, Path]:
    """Open a prepared coco split: the dataset and the path of its annotation JSON."""
    ds = CocoDetection(directory, split)
    return ds, ds.ann_path

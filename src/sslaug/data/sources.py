"""Real dataset sources: where to obtain each one, and how to turn it into a prepared format.

:data:`SOURCES` maps a dataset name to a :class:`SourceSpec`. The names are the ones the
scale configs declare under ``datasets:`` (one name per dataset, the papers' short form:
``tinyimagenet``, ``voc07``, ``voc0712``); tests/test_scale_datasets.py checks that every
declared dataset has a source here and that its preparer writes every split the workflow reads.

* ``download`` sources list archive URLs with the checksums their publishers give
  (the same values torchvision.datasets verifies). Archives are fetched with
  torchvision's download helper into a download directory, verified, extracted once
  (atomically) and then prepared. An archive already in the download directory with
  the right checksum is reused, so a cluster without internet can pre-place them.
* ``manual`` sources (ImageNet, iNaturalist, ...) cannot be downloaded by a script:
  the user passes ``--root`` to their copy and gets clear instructions otherwise.

``--source path --root DIR`` prepares from an already-extracted copy of any source.

Preparers exist for CIFAR-10/100 (python pickles -> array), STL-10 (binary -> array),
ImageFolder trees (ImageNet, ImageNet-100, generic), Tiny ImageNet, DTD, Food-101,
Oxford Pets, FGVC-Aircraft (split lists -> imagefolder), COCO 2017 and PASCAL VOC 2007,
2012 and 07+12 (XML -> coco); :mod:`sslaug.data.preparers_transfer` adds Flowers-102, Caltech-101,
SUN397, ImageNet 1%, iNaturalist 2018/2021, Places365 and the Kaggle sets (Diabetic
Retinopathy, Painter by Numbers). A spec without a preparer raises NotImplementedError.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import xml.etree.ElementTree as ET  # trusted input: checksum-verified archives or the user's own copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from torchvision.datasets.utils import calculate_md5, check_integrity, download_url, extract_archive

from sslaug.data.formats import (
    IMAGE_EXTENSIONS,
    ChecksumError,
    DataError,
    array_paths,
    check_image_file,
    coco_ann_path,
    finish_array_meta,
    save_array_split,
    write_coco_meta,
    write_imagefolder_dataset,
)
from sslaug.io import atomic_dir, sha256sum

# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Resource:
    """One downloadable file and its published checksum (None where none is published)."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """How to obtain and prepare one dataset.

    Attributes:
        kind: ``download`` (script can fetch it) or ``manual`` (user supplies ``--root``).
        format: prepared format produced (array, imagefolder, coco).
        resources: files to download, for ``download`` sources.
        preparer: key of :data:`PREPARERS`; None = preparation not implemented yet.
        instructions: how to obtain the data by hand (shown in errors).
        options: default ``--option`` values for the preparer.
        splits: the splits the preparer writes (for a generic ImageFolder tree, those it looks
            for), unless a ``splits`` option names them; see :func:`prepared_splits`.
    """

    kind: str
    format: str
    resources: tuple[Resource, ...] = ()
    preparer: str | None = None
    instructions: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    splits: tuple[str, ...] = ()


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_COCO = "http://images.cocodataset.org"
_VOC = "https://thor.robots.ox.ac.uk/pascal/VOC"
_SUN = "http://vision.princeton.edu/projects/2010/SUN"
_INAT = "https://ml-inat-competition-datasets.s3.amazonaws.com"
_PLACES = "http://data.csail.mit.edu/places/places365"


_VOC07_TRAINVAL = Resource(
    f"{_VOC}/voc2007/VOCtrainval_06-Nov-2007.tar", "VOCtrainval_06-Nov-2007.tar", md5="c52e279531787c972589f7e41ab4ae64"
)
_VOC07_TEST = Resource(
    f"{_VOC}/voc2007/VOCtest_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar", md5="b6e924de25625d8de591ea690078ad9f"
)
_VOC12_TRAINVAL = Resource(
    f"{_VOC}/voc2012/VOCtrainval_11-May-2012.tar", "VOCtrainval_11-May-2012.tar", md5="6cd6e144f989b92b3379bac3b3de84fd"
)


def _manual(what: str, url: str, layout: str = "train/ and val/ class folders") -> str:
    return (
        f"{what} must be downloaded by you from {url} (no scripted download); "
        f"pass --source path --root /path/to/copy with {layout}"
    )


# fmt: off
SOURCES: dict[str, SourceSpec] = {
    "cifar10": SourceSpec(
        kind="download", format="array", preparer="cifar10", splits=("train", "test"),
        resources=(Resource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                            md5="c58f30108f718f92721af3b95e74349a"),),
    ),
    "cifar100": SourceSpec(
        kind="download", format="array", preparer="cifar100", splits=("train", "test"),
        resources=(Resource("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                            md5="eb9058c3a382ffc7106e4002c42a8d85"),),
    ),
    "stl10": SourceSpec(
        kind="download", format="array", preparer="stl10", options={"unlabeled": "1"},
        splits=("train", "test", "unlabeled"),  # unlabeled=0 drops the last
        resources=(Resource("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "stl10_binary.tar.gz",
                            md5="91f7769df0f17e558f3565bffb0c7dfb"),),
    ),
    "tinyimagenet": SourceSpec(
        # The test labels are not public: evaluations use val.
        kind="download", format="imagefolder", preparer="tiny_imagenet", options={"image_size": "64"},
        splits=("train", "val"),
        resources=(Resource("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                            md5="90528d7ca1a48142e341f4ef8d21d0de"),),
    ),
    "dtd": SourceSpec(
        kind="download", format="imagefolder", preparer="dtd", options={"partition": "1"},
        splits=("train", "val", "test"),
        resources=(Resource(f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar.gz",
                            md5="fff73e5086ae6bdbea199a49dfb8a4c1"),),
    ),
    "food101": SourceSpec(
        kind="download", format="imagefolder", preparer="food101", splits=("train", "test"),
        resources=(Resource("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz",
                            md5="85eeb15f3717b99a5da872d97d918f87"),),
    ),
    "flowers102": SourceSpec(
        kind="download", format="imagefolder", preparer="flowers102", splits=("train", "val", "test", "trainval"),
        resources=(
            Resource(f"{_VGG}/flowers/102/102flowers.tgz", "102flowers.tgz", md5="52808999861908f626f3c1f4e79d11fa"),
            Resource(f"{_VGG}/flowers/102/imagelabels.mat", "imagelabels.mat", md5="e0620be6f572b9609742df49c70aed4d"),
            Resource(f"{_VGG}/flowers/102/setid.mat", "setid.mat", md5="a5357ecc9cb78c4bef273ce3793fc85c"),
        ),
    ),
    "pets": SourceSpec(
        kind="download", format="imagefolder", preparer="pets", splits=("train", "test"),
        resources=(
            Resource(f"{_VGG}/pets/data/images.tar.gz", "images.tar.gz", md5="5c4f3ee8e5d25df40f4fd59a7f44e54c"),
            Resource(f"{_VGG}/pets/data/annotations.tar.gz", "annotations.tar.gz",
                     md5="95a8c909bbe2e81eed6a22bccdf3f68f"),
        ),
    ),
    "aircraft": SourceSpec(
        kind="download", format="imagefolder", preparer="aircraft", options={"level": "variant"},
        splits=("train", "val", "test"),
        # The VGG page publishes no checksum for this archive (torchvision verifies none either).
        resources=(Resource(f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                            "fgvc-aircraft-2013b.tar.gz"),),
    ),
    "caltech101": SourceSpec(
        kind="download", format="imagefolder", preparer="caltech101", splits=("train", "test"),
        # No official split: Kornblith et al.'s 30 random images per class (preparers_transfer).
        options={"train_per_class": "30", "background": "include", "split_seed": "0"},
        resources=(Resource("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip", "caltech-101.zip",
                            md5="3138e1922a9193bfa496528edbbc45d0"),),
    ),
    "sun397": SourceSpec(
        kind="download", format="imagefolder", preparer="sun397", options={"partition": "1"},
        splits=("train", "test"),
        resources=(
            Resource(f"{_SUN}/SUN397.tar.gz", "SUN397.tar.gz", md5="8ca2778205c41d23104230ba66911c7a"),
            # The SUN page publishes no checksum; this sha256 is the one torchvision's prototype
            # SUN397 dataset verifies.
            Resource("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip", "Partitions.zip",
                     sha256="e3311ea5f812d4cc6faef194688343d1111f6cd6f70f2c62f393c2b8d6ba1ec9"),
        ),
    ),
    "voc07": SourceSpec(
        kind="download", format="coco", preparer="voc",
        options={"year": "2007", "splits": "trainval,test", "link": "symlink"},
        resources=(_VOC07_TRAINVAL, _VOC07_TEST),
    ),
    "voc12": SourceSpec(
        kind="download", format="coco", preparer="voc",
        # VOC2012 test annotations are not public: trainval (or train, val) only.
        options={"year": "2012", "splits": "trainval", "link": "symlink"},
        resources=(_VOC12_TRAINVAL,),
    ),
    # "VOC07+12" detection (the MoCo/DenseCL protocol of Rescue Table 2 and CLSA Table 3):
    # train on VOC2007 trainval + VOC2012 trainval (16,551 images), test on VOC2007 test (4,952).
    "voc0712": SourceSpec(
        kind="download", format="coco", preparer="voc",
        options={"splits": "trainval=2007+2012,test=2007", "link": "symlink"},
        resources=(_VOC07_TRAINVAL, _VOC07_TEST, _VOC12_TRAINVAL),
    ),
    "coco": SourceSpec(
        kind="download", format="coco", preparer="coco",
        options={"year": "2017", "splits": "train,val", "link": "symlink"},
        resources=(
            Resource(f"{_COCO}/annotations/annotations_trainval2017.zip", "annotations_trainval2017.zip",
                     md5="f4bbac642086de4f52a3fdda2de5fa2c"),
            Resource(f"{_COCO}/zips/train2017.zip", "train2017.zip", md5="cced6f7f71b7629ddf16f17bbcfab6b2"),
            Resource(f"{_COCO}/zips/val2017.zip", "val2017.zip", md5="442b8da7639aecaf257c1dceb8ba8c80"),
        ),
    ),
    "imagenet": SourceSpec(
        kind="manual", format="imagefolder", preparer="imagenet", splits=("train", "val"),
        instructions=_manual("ImageNet (ILSVRC-2012)", "image-net.org",
                             "train/ and val/ class folders (val sorted into wnid folders, e.g. by valprep.sh)"),
    ),
    "imagenet100": SourceSpec(
        kind="manual", format="imagefolder", preparer="imagenet100", options={"classes": "cmc"},
        splits=("train", "val"),
        instructions=_manual("ImageNet-100 (a 100-class subset of ILSVRC-2012)", "image-net.org",
                             "the full ImageNet train/ and val/ class folders; "
                             "--option classes=cmc|FILE|wnid,wnid,... picks the subset"),
    ),
    "imagenet_1pct": SourceSpec(
        kind="manual", format="imagefolder", preparer="imagenet_subset", splits=("train", "val"),
        # SimCLR's 1% list is fetched into data/_downloads/imagenet_1pct; GitHub publishes no
        # checksum, so meta.json records the sha256 of the list used.
        resources=(Resource("https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/"
                            "1percent.txt", "1percent.txt"),),
        instructions=_manual("ImageNet 1% (SimCLR's subset of ILSVRC-2012)", "image-net.org",
                             "the full ImageNet train/ and val/ class folders; the subset list is downloaded "
                             "(or --option subset=FILE)"),
    ),
    # iNaturalist: images and COCO-style annotation JSON from the competitions' AWS open-data
    # bucket, md5s from github.com/visipedia/inat_comp (2018/README.md, 2021/README.md).
    "inat18": SourceSpec(
        kind="download", format="imagefolder", preparer="inat", options={"year": "2018"},
        splits=("train", "val"),
        resources=(
            Resource(f"{_INAT}/2018/train_val2018.tar.gz", "train_val2018.tar.gz",
                     md5="b1c6952ce38f31868cc50ea72d066cc3"),
            Resource(f"{_INAT}/2018/train2018.json.tar.gz", "train2018.json.tar.gz",
                     md5="bfa29d89d629cbf04d826a720c0a68b0"),
            Resource(f"{_INAT}/2018/val2018.json.tar.gz", "val2018.json.tar.gz",
                     md5="f2ed8bfe3e9901cdefceb4e53cd3775d"),
        ),
    ),
    "inat21": SourceSpec(
        kind="download", format="imagefolder", preparer="inat", options={"year": "2021"},
        splits=("train", "val"),
        resources=(
            Resource(f"{_INAT}/2021/train.tar.gz", "train.tar.gz", md5="e0526d53c7f7b2e3167b2b43bb2690ed"),
            Resource(f"{_INAT}/2021/train.json.tar.gz", "train.json.tar.gz", md5="38a7bb733f7a09214d44293460ec0021"),
            Resource(f"{_INAT}/2021/val.tar.gz", "val.tar.gz", md5="f6f6e0e242e3d4c9569ba56400938afc"),
            Resource(f"{_INAT}/2021/val.json.tar.gz", "val.json.tar.gz", md5="4d761e0f6a86cc63e8f7afc91f6a8f0b"),
        ),
    ),
    # Places365-Standard, 256 x 256 images (the SSL pipelines resize to 224 anyway; the
    # high-resolution archives are 4x larger): the devkit's file lists + train and val images,
    # md5s as torchvision.datasets.Places365.
    "places365": SourceSpec(
        kind="download", format="imagefolder", preparer="places365", splits=("train", "val"),
        resources=(
            Resource(f"{_PLACES}/filelist_places365-standard.tar", "filelist_places365-standard.tar",
                     md5="35a0585fee1fa656440f3ab298f8479c"),
            Resource(f"{_PLACES}/train_256_places365standard.tar", "train_256_places365standard.tar",
                     md5="53ca1c756c3d1e7809517cc47c5561c5"),
            Resource(f"{_PLACES}/val_256.tar", "val_256.tar", md5="e27b17d8d44f4af9a78502beb927f808"),
        ),
        instructions="a Places365-Standard copy needs categories_places365.txt, places365_train_standard.txt, "
        "places365_val.txt with data_256/ and val_256/ (places2.csail.mit.edu), or the easy-format "
        "places365_standard/{train,val}/<class>/ folders",
    ),
    "retinopathy": SourceSpec(
        kind="manual", format="imagefolder", preparer="retinopathy", splits=("train", "val", "test"),
        instructions=_manual("Diabetic Retinopathy (Kaggle)", "kaggle.com/c/diabetic-retinopathy-detection/data",
                             "trainLabels.csv and train/*.jpeg (the train.zip.00* parts joined and unzipped); "
                             "for the val/test splits also retinopathy_solution.csv and test/*.jpeg, or "
                             "--option splits=train"),
    ),
    "pbn": SourceSpec(
        kind="manual", format="imagefolder", preparer="pbn", splits=("train",),
        instructions=_manual("Painter by Numbers (Kaggle)", "kaggle.com/c/painter-by-numbers/data",
                             "train_info.csv and train/*.jpg (train.zip unzipped; apply Kaggle's "
                             "replacements_for_corrupted_files.zip)"),
    ),
    "imagefolder": SourceSpec(
        kind="manual", format="imagefolder", preparer="imagefolder", splits=("train", "val", "test"),
        instructions="a generic ImageFolder dataset: pass --source path --root DIR with "
        "{train,val,test}/<class>/<image> folders",
    ),
}
# fmt: on

# CMC's ImageNet-100 (Tian et al. 2019, github.com/HobbitLong/CMC issue 21), used by most SSL papers.
IMAGENET100_CMC = (
    "n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797 "
    "n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653 "
    "n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531 "
    "n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855 "
    "n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051 "
    "n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868 "
    "n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322 "
    "n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029 "
    "n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045 "
    "n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622"
).split()


# --------------------------------------------------------------------------- download / verify / extract


def _download(url: str, dest_dir: Path, filename: str) -> None:
    """Fetch ``url`` to ``dest_dir/filename`` with torchvision's helper.

    No checksum here: :func:`fetch` verifies, so that the error names the file. Tests
    replace this function to copy a local fake archive.
    """
    download_url(url, str(dest_dir), filename=filename, md5=None)


def verify_checksum(path: Path, res: Resource) -> None:
    """Raise :class:`ChecksumError` naming ``path`` if it does not match ``res``'s checksums."""
    if res.md5 is not None and not check_integrity(str(path), res.md5):
        raise ChecksumError(
            f"checksum mismatch for {path}: md5 {calculate_md5(str(path))}, expected {res.md5} "
            f"(from {res.url}); delete the file to download it again"
        )
    if res.sha256 is not None and (got := sha256sum(path)) != res.sha256:
        raise ChecksumError(
            f"checksum mismatch for {path}: sha256 {got}, expected {res.sha256} "
            f"(from {res.url}); delete the file to download it again"
        )


def fetch(res: Resource, download_dir: Path) -> Path:
    """Return ``download_dir/res.filename``, downloading it first if absent; always verified.

    The download lands in a ``.part`` file renamed into place only once verified, so
    an interrupted or corrupt download is never mistaken for a good archive.
    """
    path = download_dir / res.filename
    if not path.exists():
        download_dir.mkdir(parents=True, exist_ok=True)
        part = download_dir / f"{res.filename}.part"
        part.unlink(missing_ok=True)  # torchvision skips downloading over an existing file
        _download(res.url, download_dir, part.name)
        if not part.is_file():
            raise DataError(f"download of {res.url} produced no file {part}")
        verify_checksum(part, res)
        os.replace(part, path)
    verify_checksum(path, res)
    return path


def fetch_and_extract(spec: SourceSpec, download_dir: Path) -> Path:
    """Fetch every resource of ``spec`` and extract the archives into ``download_dir/extracted``.

    Extraction happens once, atomically; non-archive resources are copied alongside.
    The extracted tree is kept because imagefolder datasets index images in place.
    """
    files = [fetch(res, download_dir) for res in spec.resources]
    extracted = download_dir / "extracted"
    if extracted.is_dir():
        return extracted
    with atomic_dir(extracted) as tmp:
        for path in files:
            if _is_archive(path):
                extract_archive(str(path), str(tmp))
            else:
                shutil.copy2(path, tmp / path.name)
    return extracted


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


# --------------------------------------------------------------------------- splits

#: Preparers whose ``--option splits=a,b`` chooses the splits they write.
SPLITS_OPTION_PREPARERS = frozenset({"imagefolder", "imagenet", "imagenet100", "coco", "voc", "retinopathy", "pbn"})


def prepared_splits(spec: SourceSpec, options: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The splits ``spec``'s preparer writes with these ``--option`` values (over the spec's own).

    Known without preparing anything, so a scale's split names can be checked before any
    job runs. A ``splits`` option names them where the preparer reads one (a VOC entry
    ``trainval=2007+2012`` is split ``trainval``); STL-10's ``unlabeled=0`` drops ``unlabeled``;
    otherwise they are ``spec.splits`` (for a generic ImageFolder tree: those it looks for).
    """
    opts = {**spec.options, **(options or {})}
    if spec.preparer in SPLITS_OPTION_PREPARERS and "splits" in opts:
        return tuple(entry.partition("=")[0].strip() for entry in opts["splits"].split(",") if entry.strip())
    if spec.preparer == "stl10" and opts.get("unlabeled", "1").strip() == "0":
        return tuple(s for s in spec.splits if s != "unlabeled")
    return spec.splits


# --------------------------------------------------------------------------- entry point


@dataclass
class PrepContext:
    """What every preparer gets besides the raw root and the output directory."""

    name: str
    spec: SourceSpec
    options: dict[str, str]
    seed: int
    source: dict[str, Any]
    # Where resources that go with a user's copy are fetched (e.g. the ImageNet 1% list).
    download_dir: Path | None = None


def prepare_from_source(
    name: str,
    out: Path,
    source: str,
    root: Path | None,
    options: Mapping[str, str],
    seed: int,
    default_download_dir: Path,
) -> dict[str, Any]:
    """Prepare dataset ``name`` into the (temporary) directory ``out``; return its meta.

    ``source`` is ``download`` (fetch into ``root`` or ``default_download_dir``) or
    ``path`` (``root`` is an extracted copy).
    """
    spec = SOURCES.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}, mini*")
    if spec.preparer is None:
        raise NotImplementedError(f"preparation of dataset {name!r} is not implemented yet")
    opts = {**spec.options, **options}
    # Also where resources that go with a user's copy are fetched (e.g. the ImageNet 1% list).
    download_dir = default_download_dir
    if source == "download":
        if spec.kind == "manual":
            raise DataError(spec.instructions)
        download_dir = root or default_download_dir
        raw = fetch_and_extract(spec, download_dir)
        info = {
            "type": "download",
            "download_dir": str(download_dir.resolve()),
            "resources": [{"url": r.url, "md5": r.md5, "sha256": r.sha256} for r in spec.resources],
        }
    elif source in ("path", "manual"):
        if root is None:
            raise DataError(
                f"--root is required for --source {source}; {spec.instructions or 'point it at the extracted dataset'}"
            )
        raw = root
        info = {"type": "path", "root": str(root.resolve())}
    else:
        raise DataError(f"unknown --source {source!r} for {name}: use download or path")
    if not raw.exists():
        raise DataError(f"path not found: {raw}" + (f"; {spec.instructions}" if spec.instructions else ""))
    ctx = PrepContext(name=name, spec=spec, options=opts, seed=seed, source=info, download_dir=download_dir)
    return PREPARERS[spec.preparer](raw, out, ctx)


# --------------------------------------------------------------------------- helpers


def _locate(raw: Path, subdir: str, marker: str, name: str) -> Path:
    """``raw/subdir`` or ``raw`` itself, whichever contains ``marker``."""
    for base in (raw / subdir, raw):
        if (base / marker).exists():
            return base
    raise DataError(f"{raw}: no {subdir}/{marker} (nor {marker}); is this an extracted {name} copy?")


def _int_option(ctx: PrepContext, key: str, default: int) -> int:
    value = ctx.options.get(key, str(default))
    try:
        return int(value)
    except ValueError:
        raise DataError(f"--option {key}={value}: expected an integer") from None


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- CIFAR / STL-10


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR python batch (checksum-verified archive or the user's own copy)."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"not a CIFAR python batch: {path} ({err})") from err


def _cifar_batches(base: Path, files: Sequence[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for fname in files:
        batch = _unpickle(base / fname)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"not a CIFAR python batch: {base / fname} (missing 'data' or {label_key!r})")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch[label_key]) != data.shape[0]:
            raise DataError(f"bad CIFAR batch shape in {base / fname}: data {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # stored as CHW planes
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _prepare_cifar(
    raw: Path,
    out: Path,
    ctx: PrepContext,
    folder: str,
    train: Sequence[str],
    test: Sequence[str],
    meta_file: str,
    label_key: str,
    names_key: str,
) -> dict[str, Any]:
    base = _locate(raw, folder, meta_file, ctx.name)
    classes = list(_unpickle(base / meta_file)[names_key])
    for split, files in (("train", train), ("test", test)):
        images, labels = _cifar_batches(base, files, label_key)
        save_array_split(out, split, images, labels)
    return finish_array_meta(out, ctx.name, classes, ["train", "test"], ctx.source)


def prepare_cifar10(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """CIFAR-10 python version: data_batch_1..5 -> train, test_batch -> test."""
    return _prepare_cifar(
        raw,
        out,
        ctx,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    )


def prepare_cifar100(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """CIFAR-100 python version, fine labels (100 classes)."""
    return _prepare_cifar(
        raw, out, ctx, "cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"
    )


_STL_SIDE = 96
_STL_BYTES = 3 * _STL_SIDE * _STL_SIDE


def _stl_images_to_npy(src: Path, dst: Path, chunk: int = 2048) -> int:
    """Convert an STL-10 ``*_X.bin`` to an NHWC ``.npy`` in chunks (unlabeled is 2.8 GB)."""
    if not src.is_file():
        raise DataError(f"file not found: {src}")
    size = src.stat().st_size
    if size == 0 or size % _STL_BYTES:
        raise DataError(f"not an STL-10 image file: {src} ({size} bytes is not a multiple of {_STL_BYTES})")
    n = size // _STL_BYTES
    # The binary stores each image as C x W x H (column-major), hence transpose(0, 3, 2, 1).
    raw = np.memmap(src, dtype=np.uint8, mode="r", shape=(n, 3, _STL_SIDE, _STL_SIDE))
    out = np.lib.format.open_memmap(dst, mode="w+", dtype=np.uint8, shape=(n, _STL_SIDE, _STL_SIDE, 3))
    for start in range(0, n, chunk):
        out[start : start + chunk] = raw[start : start + chunk].transpose(0, 3, 2, 1)
    out.flush()
    del out, raw
    return n


def prepare_stl10(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """STL-10 binary: train (5k), test (8k) and, unless ``unlabeled=0``, unlabeled (100k, label -1)."""
    base = _locate(raw, "stl10_binary", "class_names.txt", ctx.name)
    classes = _read_lines(base / "class_names.txt")
    splits = ["train", "test"] + (["unlabeled"] if _int_option(ctx, "unlabeled", 1) else [])
    for split in splits:
        img_path, lab_path = array_paths(out, split)
        n = _stl_images_to_npy(base / f"{split}_X.bin", img_path)
        if split == "unlabeled":
            labels = np.full(n, -1, dtype=np.int64)
        else:
            y_path = base / f"{split}_y.bin"
            if not y_path.is_file():
                raise DataError(f"file not found: {y_path}")
            labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
            if labels.shape[0] != n or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(classes):
                raise DataError(f"bad STL-10 labels in {y_path}: {labels.shape[0]} labels for {n} images")
        np.save(lab_path, labels)
    return finish_array_meta(out, ctx.name, classes, splits, ctx.source)


# --------------------------------------------------------------------------- imagefolder-style


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(class_dir: Path) -> list[Path]:
    """All images under ``class_dir`` (recursively, sorted, symlinks followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return found


def _verify_images(paths: Sequence[Path], ctx: PrepContext) -> None:
    """Check images exist and parse (``verify=header``, default), decode (``full``) or skip (``none``).

    Threads overlap the file-system latency; results are consumed in order so the
    first bad file reported is deterministic.
    """
    mode = ctx.options.get("verify", "header")
    if mode not in ("header", "full", "none"):
        raise DataError(f"--option verify={mode}: expected header, full or none")
    for p in paths:
        if not p.is_file():
            raise DataError(f"image file missing: {p}")
    if mode == "none":
        return
    workers = _int_option(ctx, "workers", min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(lambda p: check_image_file(p, full=mode == "full"), paths):
            pass


def _write_rows(
    out: Path,
    ctx: PrepContext,
    root: Path,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[tuple[Path, str]]],
    default_size: int = 224,
) -> dict[str, Any]:
    """Verify (path, class name) rows, map class names to labels and write the imagefolder index."""
    index = {c: i for i, c in enumerate(classes)}
    rows: dict[str, list[tuple[str, int]]] = {}
    for split, items in splits.items():
        if not items:
            raise DataError(f"{ctx.name}: split {split!r} has no images under {root}")
        _verify_images([p for p, _ in items], ctx)
        rows[split] = [(p.relative_to(root).as_posix(), index[c]) for p, c in items]
    size = _int_option(ctx, "image_size", default_size)
    return write_imagefolder_dataset(out, ctx.name, root, classes, rows, ctx.source, size)


def _class_subset(ctx: PrepContext) -> list[str] | None:
    """``--option classes=cmc|FILE|a,b,c`` -> class list (None = all classes)."""
    value = ctx.options.get("classes")
    if not value:
        return None
    if value == "cmc":
        return sorted(IMAGENET100_CMC)
    if Path(value).is_file():
        return sorted(_read_lines(Path(value)))
    return sorted(c.strip() for c in value.split(",") if c.strip())


def prepare_imagefolder(raw: Path, out: Path, ctx: PrepContext, required: Sequence[str] = ()) -> dict[str, Any]:
    """``root/{split}/<class>/<images>`` trees (ImageNet layout).

    Splits: ``--option splits=train,val`` or whichever of train/val/test exist.
    Classes: the sorted sub-folders of the first split, or ``--option classes=...``.
    Every class must have a non-empty folder in every split.
    """
    for split in required:
        if not (raw / split).is_dir():
            raise DataError(f"directory missing: {raw / split}; {ctx.spec.instructions}")
    if "splits" in ctx.options:
        splits = [s for s in ctx.options["splits"].split(",") if s]
    else:
        splits = [s for s in ("train", "val", "test") if (raw / s).is_dir()]
    if not splits:
        raise DataError(f"{raw}: no train/, val/ or test/ folder; {ctx.spec.instructions}")
    classes = _class_subset(ctx) or sorted(d.name for d in (raw / splits[0]).iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"no class folders in {raw / splits[0]}")
    items: dict[str, list[tuple[Path, str]]] = {}
    for split in splits:
        items[split] = []
        for c in classes:
            class_dir = raw / split / c
            if not class_dir.is_dir():
                raise DataError(f"class directory missing: {class_dir}")
            images = _list_images(class_dir)
            if not images:
                raise DataError(f"class directory has no images: {class_dir}")
            items[split].extend((p, c) for p in images)
    return _write_rows(out, ctx, raw, classes, items)


def prepare_imagenet(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """ImageNet: an ImageFolder tree that must have train/ and val/."""
    ctx.options.setdefault("splits", "train,val")
    return prepare_imagefolder(raw, out, ctx, required=("train", "val"))


def prepare_imagenet100(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """ImageNet-100: the full ImageNet tree restricted to a class list (default CMC's)."""
    return prepare_imagenet(raw, out, ctx)


def prepare_tiny_imagenet(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Tiny ImageNet-200: train/<wnid>/images/*.JPEG; val labels in val/val_annotations.txt."""
    base = _locate(raw, "tiny-imagenet-200", "wnids.txt", ctx.name)
    classes = sorted(_read_lines(base / "wnids.txt"))
    train = []
    for c in classes:
        images = _list_images(base / "train" / c / "images")
        if not images:
            raise DataError(f"class directory has no images: {base / 'train' / c / 'images'}")
        train.extend((p, c) for p in images)
    val = []
    for line in _read_lines(base / "val" / "val_annotations.txt"):
        fname, wnid = line.split("\t")[:2]
        if wnid not in classes:
            raise DataError(f"{base / 'val' / 'val_annotations.txt'}: unknown class {wnid}")
        val.append((base / "val" / "images" / fname, wnid))
    return _write_rows(out, ctx, base, classes, {"train": train, "val": val}, default_size=64)


def prepare_dtd(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """DTD: 47 texture classes; splits train/val/test from ``labels/{split}{partition}.txt``."""
    base = _locate(raw, "dtd", "labels", ctx.name)
    part = _int_option(ctx, "partition", 1)
    classes = sorted(d.name for d in (base / "images").iterdir() if d.is_dir())
    splits = {
        split: [
            (base / "images" / rel, rel.split("/")[0]) for rel in _read_lines(base / "labels" / f"{split}{part}.txt")
        ]
        for split in ("train", "val", "test")
    }
    return _write_rows(out, ctx, base, classes, splits)


def prepare_food101(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Food-101: ``meta/{train,test}.txt`` list ``class/id`` of ``images/class/id.jpg``."""
    base = _locate(raw, "food-101", "meta/classes.txt", ctx.name)
    classes = _read_lines(base / "meta" / "classes.txt")
    splits = {
        split: [
            (base / "images" / f"{rel}.jpg", rel.split("/")[0]) for rel in _read_lines(base / "meta" / f"{split}.txt")
        ]
        for split in ("train", "test")
    }
    return _write_rows(out, ctx, base, classes, splits)


def prepare_pets(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """Oxford-IIIT Pets: ``annotations/{trainval,test}.txt`` (name class_id species breed)."""
    base = _locate(raw, "oxford-iiit-pet", "annotations/trainval.txt", ctx.name)
    by_id: dict[int, str] = {}
    splits: dict[str, list[tuple[Path, str]]] = {}
    for split, fname in (("train", "trainval.txt"), ("test", "test.txt")):
        rows = []
        for line in _read_lines(base / "annotations" / fname):
            if line.startswith("#"):
                continue
            image, class_id = line.split()[:2]
            breed = image.rsplit("_", 1)[0]  # file names are <Breed_Name>_<n>
            by_id[int(class_id)] = breed
            rows.append((base / "images" / f"{image}.jpg", breed))
        splits[split] = rows
    classes = [by_id[i] for i in sorted(by_id)]
    return _write_rows(out, ctx, base, classes, splits)


def prepare_aircraft(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """FGVC-Aircraft: ``data/images_{level}_{split}.txt`` lines ``<image id> <class name>``."""
    level = ctx.options.get("level", "variant")
    if level not in ("variant", "family", "manufacturer"):
        raise DataError(f"--option level={level}: expected variant, family or manufacturer")
    base = _locate(raw, "fgvc-aircraft-2013b", "data", ctx.name)
    plural = {"variant": "variants", "family": "families", "manufacturer": "manufacturers"}[level]
    classes = _read_lines(base / "data" / f"{plural}.txt")
    splits = {}
    for split in ("train", "val", "test"):
        rows = []
        for line in _read_lines(base / "data" / f"images_{level}_{split}.txt"):
            image, name = line.split(" ", 1)
            rows.append((base / "data" / "images" / f"{image}.jpg", name))
        splits[split] = rows
    return _write_rows(out, ctx, base, classes, splits)


# --------------------------------------------------------------------------- COCO


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"not valid JSON: {path} ({err})") from err


def _link_images(src: Path, dst: Path, mode: str, files: Iterable[str]) -> None:
    """Make ``dst`` give access to ``src``'s images: a directory symlink (default) or copies."""
    if mode == "symlink":
        dst.symlink_to(src.resolve(), target_is_directory=True)
    elif mode == "copy":
        dst.mkdir(parents=True)
        for name in files:
            shutil.copy2(src / name, dst / name)
    else:
        raise DataError(f"--option link={mode}: expected symlink or copy")


def prepare_coco(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """COCO: ``annotations/instances_{split}{year}.json`` + ``{split}{year}/`` images -> coco format.

    The annotation JSON is copied unchanged (``file_name`` stays valid because the
    image folder is linked as ``images/{split}``); every referenced image must exist.
    """
    year = ctx.options.get("year", "2017")
    splits = [s for s in ctx.options.get("splits", "train,val").split(",") if s]
    base = _locate(raw, "coco", "annotations", ctx.name)
    (out / "annotations").mkdir()
    (out / "images").mkdir()
    counts: dict[str, int] = {}
    categories: list[dict[str, Any]] | None = None
    for split in splits:
        ann_src = base / "annotations" / f"instances_{split}{year}.json"
        coco = _load_json(ann_src)
        img_dir = base / f"{split}{year}"
        if not img_dir.is_dir():
            raise DataError(f"image directory missing: {img_dir}")
        names = [im["file_name"] for im in coco.get("images", [])]
        missing = [n for n in names if not (img_dir / n).is_file()]
        if missing:
            raise DataError(f"image file missing: {img_dir / missing[0]} ({len(missing)} of {len(names)} missing)")
        shutil.copyfile(ann_src, coco_ann_path(out, split))
        _link_images(img_dir, out / "images" / split, ctx.options.get("link", "symlink"), names)
        counts[split] = len(names)
        categories = categories or coco.get("categories", [])
    return write_coco_meta(out, ctx.name, categories or [], counts, ctx.source)


VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _voc_objects(xml_path: Path) -> tuple[int, int, list[tuple[str, int, list[float]]]]:
    """(width, height, [(class, difficult, [xmin, ymin, xmax, ymax])]) of one VOC annotation."""
    try:
        root = ET.parse(xml_path).getroot()
        size = root.find("size")  # a missing element raises AttributeError below: reported as bad file
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        objects = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((obj.findtext("name", "").strip(), int(obj.findtext("difficult", "0")), coords))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise DataError(f"bad VOC annotation: {xml_path} ({err})") from err
    for name, _, _ in objects:
        if name not in VOC_CLASSES:
            raise DataError(f"bad VOC annotation: {xml_path} (unknown class {name!r})")
    return width, height, objects


def _voc_to_coco(items: Sequence[tuple[Path, str]]) -> dict[str, Any]:
    """COCO JSON for VOC images given as (annotation XML, ``file_name``) pairs.

    VOC boxes are 1-based inclusive pixel corners: x = xmin - 1, w = xmax - xmin + 1.
    ``difficult`` objects become ``iscrowd=1``: COCO evaluation then ignores them as
    VOC evaluation does (and training targets drop them); the flag is also kept as
    ``difficult``. Image ids are 1.. in list order (VOC2012 names are not ints), so images
    of several years listed together never share an id.
    """
    images, anns = [], []
    for image_id, (xml_path, file_name) in enumerate(items, start=1):
        width, height, objects = _voc_objects(xml_path)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for name, difficult, (x0, y0, x1, y1) in objects:
            x, y, w, h = x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": VOC_CLASSES.index(name) + 1,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": difficult, "difficult": difficult,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })  # fmt: skip
    return {"info": {"description": "PASCAL VOC converted by sslaug"}, "licenses": [], "images": images,
            "annotations": anns, "categories": _voc_categories()}  # fmt: skip


def _voc_categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": c, "supercategory": "voc"} for i, c in enumerate(VOC_CLASSES)]


def _voc_split_years(ctx: PrepContext) -> list[tuple[str, list[str]]]:
    """``--option splits`` as [(split, [year, ...])]: ``test`` reads the ``year`` option's list,
    ``trainval=2007+2012`` concatenates both years' ``trainval`` lists (VOC07+12)."""
    default_year = ctx.options.get("year", "2007")
    entries: list[tuple[str, list[str]]] = []
    for entry in ctx.options.get("splits", "trainval").split(","):
        if not entry.strip():
            continue
        split, sep, years_text = (part.strip() for part in entry.partition("="))
        years = [y.strip() for y in years_text.split("+")] if sep else [default_year]
        bad = not split or any(not (y.isdigit() and len(y) == 4) for y in years) or len(set(years)) < len(years)
        if bad or split in (s for s, _ in entries):
            raise DataError(
                f"--option splits={ctx.options.get('splits')}: entry {entry!r}; expected SPLIT or SPLIT=YEAR+YEAR "
                "(e.g. trainval=2007+2012), each split once"
            )
        entries.append((split, years))
    if not entries:
        raise DataError(f"--option splits={ctx.options.get('splits')!r}: no split named")
    return entries


def _voc_year_dir(raw: Path, year: str, only_year: bool, name: str) -> Path:
    """``VOCdevkit/VOC{year}`` or ``VOC{year}`` under ``raw``; ``raw`` itself only if it is the one year read."""
    candidates = [raw / "VOCdevkit" / f"VOC{year}", raw / f"VOC{year}"] + ([raw] if only_year else [])
    for base in candidates:
        if (base / "ImageSets" / "Main").is_dir():
            return base
    raise DataError(f"{raw}: no VOCdevkit/VOC{year}/ImageSets/Main; is this an extracted {name} copy?")


def prepare_voc(raw: Path, out: Path, ctx: PrepContext) -> dict[str, Any]:
    """PASCAL VOC detection -> coco format; each split from ``VOC{year}/ImageSets/Main/{split}.txt``.

    ``--option splits=trainval,test`` reads the ``year`` option's lists; an entry
    ``trainval=2007+2012`` makes one split of both years' lists (VOC07+12). A one-year split
    keeps VOC's file names (``images/{split}`` links that year's ``JPEGImages``); a split of
    several years names its files ``VOC{year}/{stem}.jpg`` (``images/{split}/VOC{year}`` links
    each year's ``JPEGImages``), so equal stems of two years could not clash either.
    """
    split_years = _voc_split_years(ctx)
    years = sorted({year for _, ys in split_years for year in ys})
    bases = {year: _voc_year_dir(raw, year, len(years) == 1, ctx.name) for year in years}
    link = ctx.options.get("link", "symlink")
    (out / "annotations").mkdir()
    (out / "images").mkdir()
    counts = {}
    for split, split_year_list in split_years:
        several = len(split_year_list) > 1
        items: list[tuple[Path, str]] = []
        names: dict[str, list[str]] = {}
        for year in split_year_list:
            base = bases[year]
            stems = _read_lines(base / "ImageSets" / "Main" / f"{split}.txt")
            missing = [s for s in stems if not (base / "JPEGImages" / f"{s}.jpg").is_file()]
            if missing:
                raise DataError(f"image file missing: {base / 'JPEGImages' / missing[0]}.jpg ({len(missing)} missing)")
            names[year] = [f"{s}.jpg" for s in stems]
            prefix = f"VOC{year}/" if several else ""
            items += [(base / "Annotations" / f"{s}.xml", prefix + n) for s, n in zip(stems, names[year])]
        with open(coco_ann_path(out, split), "w", encoding="utf-8") as f:
            json.dump(_voc_to_coco(items), f)
        if several:
            (out / "images" / split).mkdir()
        for year in split_year_list:
            target = out / "images" / split / f"VOC{year}" if several else out / "images" / split
            _link_images(bases[year] / "JPEGImages", target, link, names[year])
        counts[split] = len(items)
    return write_coco_meta(out, ctx.name, _voc_categories(), counts, ctx.source)


Preparer = Callable[[Path, Path, PrepContext], dict[str, Any]]

PREPARERS: dict[str, Preparer] = {
    "cifar10": prepare_cifar10,
    "cifar100": prepare_cifar100,
    "stl10": prepare_stl10,
    "imagefolder": prepare_imagefolder,
    "imagenet": prepare_imagenet,
    "imagenet100": prepare_imagenet100,
    "tiny_imagenet": prepare_tiny_imagenet,
    "dtd": prepare_dtd,
    "food101": prepare_food101,
    "pets": prepare_pets,
    "aircraft": prepare_aircraft,
    "coco": prepare_coco,
    "voc": prepare_voc,
}

# The transfer, iNaturalist, Places365 and Kaggle preparers live in their own module, which
# imports the helpers above; importing it last (after they exist) keeps the cycle harmless.
from sslaug.data import preparers_transfer

PREPARERS.update(preparers_transfer.PREPARERS)

"""Pretraining on several splits: STL-10's 5k labelled + 100k unlabeled images (MSR, 003 Sec. 4.1).

A scale's ``datasets.<name>.splits.pretrain`` names the splits; the run's spec carries them
(only when not the default ``[train]``, so existing specs stay byte-identical) and
:class:`sslaug.engine.batches.BatchSource` concatenates them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sslaug.config import load_workflow_config
from sslaug.data.formats import ArrayDataset, write_array_dataset, write_imagefolder_dataset
from sslaug.engine.batches import BatchSource
from sslaug.engine.pretrain import main as pretrain_main
from sslaug.plan import PretrainRun, pretrain_splits, run_spec

ROOT = Path(__file__).resolve().parents[1]
MINI = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stl_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An array set laid out as the STL-10 preparer writes it: labelled train and test, unlabeled (-1)."""
    rng = np.random.default_rng(0)
    splits = {
        "train": (rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), np.arange(12) % 2),
        "test": (rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), np.arange(4) % 2),
        "unlabeled": (rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), np.full(20, -1)),
    }
    directory = tmp_path_factory.mktemp("stl") / "stl10"
    directory.mkdir()
    write_array_dataset(directory, ArrayDataset("stl10", ["a", "b"], splits), source="test")
    return directory


def all_images(source: BatchSource, epoch: int = 0) -> dict[int, torch.Tensor]:
    return {int(i): img for images, indices in source.epoch(epoch) for img, i in zip(images, indices)}


def test_batch_source_concatenates_the_splits_in_order(stl_like: Path) -> None:
    train = np.load(stl_like / "train_images.npy")
    unlabeled = np.load(stl_like / "unlabeled_images.npy")
    both = BatchSource(stl_like, ["train", "unlabeled"], global_batch=8, seed=0, device=CPU)
    assert both.num_items == 32 and both.steps_per_epoch == 4
    expected = torch.from_numpy(np.concatenate([train, unlabeled])).permute(0, 3, 1, 2)
    assert torch.equal(both.images, expected)
    seen = all_images(both)
    assert len(seen) == 32 and any(i >= 12 for i in seen)  # unlabeled images are drawn too
    for index, image in seen.items():
        assert torch.equal(image, expected[index])


def test_default_split_is_unchanged(stl_like: Path) -> None:
    default = BatchSource(stl_like, "train", global_batch=4, seed=0, device=CPU)
    as_list = BatchSource(stl_like, ["train"], global_batch=4, seed=0, device=CPU)
    assert default.num_items == 12
    assert torch.equal(default.images, torch.from_numpy(np.load(stl_like / "train_images.npy")).permute(0, 3, 1, 2))
    assert torch.equal(default.images, as_list.images)
    for (a, ia), (b, ib) in zip(default.epoch(1), as_list.epoch(1)):
        assert torch.equal(a, b) and torch.equal(ia, ib)


def test_missing_split_and_imagefolder_sets_are_named(stl_like: Path, tmp_path: Path) -> None:
    from sslaug.data.formats import DataError

    with pytest.raises(DataError, match="split 'extra' not in prepared dataset"):
        BatchSource(stl_like, ["train", "extra"], global_batch=4, seed=0, device=CPU)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_imagefolder_dataset(folder, "folder", tmp_path, ["a"], {"train": [], "unlabeled": []}, source="test")
    with pytest.raises(ValueError, match=rf"{folder}: pretraining on several splits .* needs an array-format"):
        BatchSource(folder, ["train", "unlabeled"], global_batch=4, seed=0, device=CPU)


def workflow_scale(name: str) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config = {**config, "scale": name, "scales": {name: f"config/scales/{name}.yaml"}}
    return load_workflow_config(config, ROOT, ROOT / "workflow" / "schemas").scale


@pytest.mark.parametrize("scale_name", ["cifar", "paper"])
def test_stl10_runs_pretrain_on_train_and_unlabeled(scale_name: str) -> None:
    scale = workflow_scale(scale_name)
    stl = run_spec(PretrainRun("byol", "msr", (), "resnet18_cifar", "stl10", 200, 0), scale_name, scale)
    assert stl["pretrain_splits"] == ["train", "unlabeled"]
    cifar = run_spec(PretrainRun("byol", "msr", (), "resnet18_cifar", "cifar100", 200, 0), scale_name, scale)
    assert "pretrain_splits" not in cifar  # the default leaves the spec as it was
    assert pretrain_splits(scale, "stl10") == ["train", "unlabeled"] and pretrain_splits(scale, "nowhere") == ["train"]


def test_schema_rejects_a_bad_pretrain_splits_value(tmp_path: Path) -> None:
    scale = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())
    scale["datasets"]["mini"]["splits"] = {"pretrain": "train"}  # a string, not a list
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(scale))
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config = {**config, "scale": "bad", "scales": {"bad": str(path)}}
    with pytest.raises(Exception, match=r"datasets\.mini\.splits\.pretrain"):
        load_workflow_config(config, ROOT, ROOT / "workflow" / "schemas")


def test_pretraining_reads_the_unlabeled_split(stl_like: Path, tmp_path: Path) -> None:
    """The real entry point trains one epoch over train + unlabeled (32 images = 4 steps of 8)."""
    spec = run_spec(PretrainRun("simclr", "standard", (), "tiny", "mini", 1, 0), "mini", MINI)
    spec.update(image_size=16, pretrain_splits=["train", "unlabeled"])
    spec["train"] = {**spec["train"], "batch_size": 8, "num_workers": 0, "warmup_epochs": 0}
    run_dir, out = tmp_path / "run", tmp_path / "encoder.pt"
    argv = ["--spec", json.dumps(spec), "--data", str(stl_like), "--run-dir", str(run_dir), "--out", str(out)]
    assert pretrain_main(argv) == 0 and out.is_file()
    assert json.loads((run_dir / "spec.json").read_text())["pretrain_splits"] == ["train", "unlabeled"]
    steps = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["step"]
    assert steps == 4  # 12 labelled + 20 unlabeled images; train alone would give 1 step

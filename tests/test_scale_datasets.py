"""Every dataset a scale config declares can be prepared, with every split the workflow reads.

A scale's ``datasets:`` keys are the names the ``prepare_dataset`` jobs get. A name that
:data:`sslaug.data.sources.SOURCES` does not know, or a split its preparer does not write,
fails only when the job runs (a dry run does not show it), hours into a cluster run. These
checks read the scale configs and the resolved plan, and compare them with the splits each
source declares (:func:`sslaug.data.sources.prepared_splits`); that declaration is in turn
checked against real preparations of fake archives (``run_prepare`` in test_data.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sslaug.config import load_workflow_config
from sslaug.data import sources
from sslaug.plan import PRETRAIN_PROTOCOLS, Plan, eval_split_name, pretrain_splits

ROOT = Path(__file__).resolve().parents[1]
SCALE_FILES = sorted((ROOT / "config" / "scales").glob("*.yaml"))
#: Splits read outside the evaluations: style sets (sslaug.augment.style_features) and generative
#: views (rule precompute_generative_views); pretraining reads ``datasets.<name>.splits.pretrain``.
TRAIN_SPLIT = "train"


def load_scale(scale_file: Path) -> tuple[dict[str, Any], Plan]:
    """The validated scale config and its plan over config/tables.yaml, as the workflow builds them."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config = {**config, "scale": scale_file.stem, "scales": {scale_file.stem: str(scale_file.relative_to(ROOT))}}
    workflow = load_workflow_config(config, ROOT, ROOT / "workflow" / "schemas")
    return workflow.scale, workflow.plan


def splits_read(scale: dict[str, Any], plan: Plan) -> dict[str, dict[str, str]]:
    """dataset -> {split the workflow reads: what reads it}."""
    reads: dict[str, dict[str, str]] = {}
    for name, settings in scale["datasets"].items():
        for role, value in (settings.get("splits") or {}).items():
            for split in [value] if isinstance(value, str) else value:  # pretrain: a list of splits
                reads.setdefault(name, {})[split] = f"datasets.{name}.splits.{role}"
    for run in plan.runs.values():
        for split in pretrain_splits(scale, run.dataset):
            reads.setdefault(run.dataset, {}).setdefault(split, f"pretraining run {run.run_id}")
        if run.style_source:
            reads.setdefault(run.style_source, {}).setdefault(TRAIN_SPLIT, f"style set of {run.run_id}")
    for cells in plan.cells.values():
        for cell in cells:
            evaluation = cell.evaluation
            if evaluation.protocol in PRETRAIN_PROTOCOLS:
                continue
            for role in ("train", "test"):
                split = eval_split_name(scale, evaluation.protocol, evaluation.dataset, role)
                where = f"{evaluation.protocol} evaluation ({role}) of {cell.table} {cell.row!r} | {cell.column!r}"
                reads.setdefault(evaluation.dataset, {}).setdefault(split, where)
    return reads


def dataset_problems(scale: dict[str, Any], plan: Plan, where: str) -> list[str]:
    """One line per declared dataset that cannot be prepared, or lacks a split the workflow reads."""
    problems = []
    reads = splits_read(scale, plan)
    for name, settings in sorted(scale["datasets"].items()):
        key = f"{where}: datasets.{name}"
        if settings["source"] == "generate":
            if not name.startswith("mini"):
                problems.append(f"{key}: source generate makes only mini* datasets")
            continue
        spec = sources.SOURCES.get(name)
        if spec is None:
            problems.append(
                f"{key}: no such source in sslaug.data.sources.SOURCES (known: {', '.join(sorted(sources.SOURCES))})"
            )
            continue
        if spec.preparer is None or spec.preparer not in sources.PREPARERS:
            problems.append(f"{key}: source has no preparer")
            continue
        if settings["source"] == "download" and spec.kind != "download":
            problems.append(f"{key}: source download, but {name} cannot be downloaded by a script ({spec.kind})")
        written = sources.prepared_splits(spec, {k: str(v) for k, v in (settings.get("options") or {}).items()})
        for split, reader in sorted(reads.get(name, {}).items()):
            if split not in written:
                problems.append(
                    f"{key}: split {split!r} ({reader}) is not one the preparer writes: {', '.join(written)}"
                )
    return problems


@pytest.mark.parametrize("scale_file", SCALE_FILES, ids=[p.stem for p in SCALE_FILES])
def test_every_scale_dataset_is_preparable(scale_file: Path) -> None:
    scale, plan = load_scale(scale_file)
    assert dataset_problems(scale, plan, str(scale_file.relative_to(ROOT))) == []


def test_scales_found() -> None:
    assert {p.stem for p in SCALE_FILES} >= {"mini", "cifar", "paper"}


def test_guard_reports_unknown_names_and_splits() -> None:
    """The guard fails on the issue #6 bug: names SOURCES does not know, splits never written."""
    scale, plan = load_scale(ROOT / "config" / "scales" / "paper.yaml")
    scale = {**scale, "datasets": dict(scale["datasets"])}
    scale["datasets"]["voc2007"] = {"source": "download", "splits": {"train": "trainval", "test": "test"}}
    scale["datasets"]["tiny_imagenet_typo"] = {"source": "download", "image_size": 64}
    scale["datasets"]["tinyimagenet"] = {"source": "download", "image_size": 64}  # reads test: never written
    scale["datasets"]["imagenet"] = {"source": "download", "image_size": 224, "splits": {"test": "val"}}
    # Pretraining on STL-10's unlabeled images, which option unlabeled=0 does not prepare.
    scale["datasets"]["stl10"] = {**scale["datasets"]["stl10"], "options": {"unlabeled": 0}}
    problems = dataset_problems(scale, plan, "paper.yaml")
    assert any(p.startswith("paper.yaml: datasets.voc2007: no such source") for p in problems)
    assert any(p.startswith("paper.yaml: datasets.tiny_imagenet_typo: no such source") for p in problems)
    assert any("datasets.tinyimagenet: split 'test' (linear evaluation (test)" in p for p in problems)
    assert any("datasets.imagenet: source download, but imagenet cannot be downloaded" in p for p in problems)
    assert any("datasets.stl10: split 'unlabeled' (datasets.stl10.splits.pretrain)" in p for p in problems)
    assert len(problems) == 5, problems


def test_prepared_splits_follow_options() -> None:
    voc0712 = sources.SOURCES["voc0712"]
    assert sources.prepared_splits(voc0712) == ("trainval", "test")
    assert sources.prepared_splits(sources.SOURCES["voc07"], {"splits": "test"}) == ("test",)
    assert sources.prepared_splits(sources.SOURCES["stl10"], {"unlabeled": "0"}) == ("train", "test")
    assert sources.prepared_splits(sources.SOURCES["retinopathy"], {"splits": "train"}) == ("train",)
    # Preparers that do not read a splits option keep their own.
    assert sources.prepared_splits(sources.SOURCES["cifar10"], {"splits": "val"}) == ("train", "test")


def test_eval_split_name_defaults_and_overrides() -> None:
    scale = {"datasets": {"voc0712": {"splits": {"train": "trainval", "test": "test"}}, "coco": {}}}
    assert eval_split_name(scale, "detection", "coco", "test") == "val"
    assert eval_split_name(scale, "linear", "coco", "test") == "test"
    assert eval_split_name(scale, "detection", "voc0712", "train") == "trainval"
    assert eval_split_name(scale, "detection", "voc0712", "test") == "test"
    with pytest.raises(ValueError, match="role 'val'"):
        eval_split_name(scale, "linear", "coco", "val")


def test_pretrain_splits_reach_the_guard() -> None:
    """STL-10 pretraining reads train + unlabeled at cifar and paper; other datasets read train only."""
    for scale_name in ("cifar", "paper"):
        scale, plan = load_scale(ROOT / "config" / "scales" / f"{scale_name}.yaml")
        assert pretrain_splits(scale, "stl10") == ["train", "unlabeled"]
        assert pretrain_splits(scale, "cifar10") == ["train"]
        reads = splits_read(scale, plan)
        assert {"train", "unlabeled"} <= set(reads["stl10"])

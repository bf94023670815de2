"""The experiment registry: shared runs train once, ids are stable, bad config is named."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from sslaug.config import ConfigError, load_workflow_config
from sslaug.plan import build_plan, run_spec

from conftest import ROOT

SCHEMAS = ROOT / "workflow" / "schemas"
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
TABLES = yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())["tables"]


def scale(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / "scales" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["mini", "cifar", "paper"])
def test_every_scale_validates_and_plans(name: str) -> None:
    wf = load_workflow_config({**CONFIG, "scale": name}, ROOT, SCHEMAS)
    assert set(wf.plan.cells) == set(TABLES)
    assert all(wf.plan.cells[t] for t in TABLES), "every table has cells"


def test_shared_baseline_trains_once() -> None:
    """The MoCo v2 ResNet-50 baseline of SASSL and CLSA resolves to the same run ids where identical."""
    plan = build_plan(TABLES, "paper", scale("paper"))
    cells = [c for cells in plan.cells.values() for c in cells]
    runs_used = [r.run_id for c in cells for r in c.runs]
    assert len(set(runs_used)) < len(runs_used), "identical pretraining runs are shared"
    assert len(plan.runs) == len(set(runs_used))
    sassl_runs = {r.run_id for c in plan.cells["sassl_table1"] for r in c.runs}
    other = {r.run_id for t, cs in plan.cells.items() if t.startswith("sassl_table2") for c in cs for r in c.runs}
    assert sassl_runs & other, "SASSL Table 1's runs are reused by Table 2"


def test_editing_one_table_renames_nothing_else() -> None:
    before = build_plan(TABLES, "paper", scale("paper"))
    edited = copy.deepcopy(TABLES)
    first = next(iter(edited))
    edited[first]["rows"]["An extra row"] = {"pretrain": {"epochs": 7}}
    after = build_plan(edited, "paper", scale("paper"))
    for table, cells in before.cells.items():
        if table == first:
            continue
        assert [r.run_id for c in cells for r in c.runs] == [r.run_id for c in after.cells[table] for r in c.runs]
    assert set(before.runs) <= set(after.runs)


def test_run_ids_are_readable() -> None:
    plan = build_plan(TABLES, "paper", scale("paper"))
    some = next(r for r in plan.runs.values() if r.method == "simclr" and r.augmentation == "standard")
    assert some.run_id.startswith("simclr/standard/")
    assert some.run_id.endswith(f"_ep{some.epochs}/seed{some.seed}")


def test_mini_maps_everything_to_generated_data() -> None:
    plan = build_plan(TABLES, "mini", scale("mini"))
    assert {r.dataset for r in plan.runs.values()} == {"mini"}
    # The tiny convnet, and a mini ViT for DINOv2, which masks patch tokens.
    assert {r.backbone for r in plan.runs.values() if r.method != "dinov2"} == {"tiny"}
    assert {r.backbone for r in plan.runs.values() if r.method == "dinov2"} == {"vit_mini"}


def test_cifar_stem_follows_the_dataset() -> None:
    plan = build_plan(TABLES, "cifar", scale("cifar"))
    # 32 px inputs: the ResNet's 3x3 stem; DINOv2's ViT gets 4 px patches.
    backbones = {r.backbone for r in plan.runs.values() if r.dataset.startswith("cifar")}
    assert backbones == {"resnet18_cifar", "vit_small_cifar"}
    assert {r.backbone for r in plan.runs.values() if r.method == "dinov2"} == {"vit_small_cifar"}


def test_method_overrides_apply_in_order() -> None:
    s = scale("paper")
    plan = build_plan(TABLES, "paper", s)
    run = next(r for r in plan.runs.values() if r.method == "byol" and r.backbone == "resnet18_cifar")
    spec = run_spec(run, "paper", s)
    assert spec["hparams"]["momentum_base"] == 0.99 and spec["train"]["batch_size"] == 256
    assert spec["image_size"] == 32


# ------------------------------------------------------------------ clear errors
def copy_config(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return tmp_path


def load(tmp_path: Path, **overrides) -> None:
    load_workflow_config({**CONFIG, **overrides}, tmp_path, SCHEMAS)


def test_bad_scale_value_names_file_and_path(tmp_path: Path) -> None:
    root = copy_config(tmp_path)
    path = root / "config" / "scales" / "mini.yaml"
    data = yaml.safe_load(path.read_text())
    data["methods"]["simclr"]["train"]["batch_size"] = "lots"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"config/scales/mini.yaml: methods\.simclr\.train\.batch_size: 'lots'"):
        load(root)


def test_config_key_typo_is_named(tmp_path: Path) -> None:
    root = copy_config(tmp_path)
    path = root / "config" / "scales" / "mini.yaml"
    data = yaml.safe_load(path.read_text())
    data["methods"]["byol"]["train"]["bacth_size"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"methods\.byol\.train: .*'bacth_size'"):
        load(root)


def test_unknown_method_in_a_table_is_named(tmp_path: Path) -> None:
    root = copy_config(tmp_path)
    path = root / "config" / "tables.yaml"
    data = yaml.safe_load(path.read_text())
    first = next(iter(data["tables"]))
    data["tables"][first]["pretrain"]["method"] = "simclrr"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=rf"config/tables.yaml: tables\.{first}\.pretrain\.method: 'simclrr'"):
        load(root)


def test_unknown_scale_is_named() -> None:
    with pytest.raises(ConfigError, match="scale: 'huge' is not one of"):
        load_workflow_config({**CONFIG, "scale": "huge"}, ROOT, SCHEMAS)


def test_undeclared_dataset_is_named(tmp_path: Path) -> None:
    root = copy_config(tmp_path)
    path = root / "config" / "scales" / "mini.yaml"
    data = yaml.safe_load(path.read_text())
    data["map"]["dataset"]["cifar10"] = "cifar10"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="datasets: 'cifar10' is used by a table but not declared"):
        load(root)


def test_paper_value_for_unknown_row_is_named(tmp_path: Path) -> None:
    root = copy_config(tmp_path)
    path = root / "config" / "paper_values.csv"
    first = next(iter(TABLES))
    with open(path, "a") as f:
        f.write(f"{first},No such row,Top-1,1.0,,made up\n")
    with pytest.raises(ConfigError, match=f"paper_values.csv:[0-9]+: table '{first}' has no row 'No such row'"):
        load(root)


def test_option_defaults_agree_with_the_engine() -> None:
    """A default spelled out in a table must mean what the engine does without it."""
    from dataclasses import fields

    from sslaug.augment.generative import GenerativeConfig
    from sslaug.augment.sassl import SASSLConfig
    from sslaug.plan import OPTION_DEFAULTS

    for cls, augmentation in ((SASSLConfig, "sassl"), (GenerativeConfig, "generative")):
        engine = {f.name: f.default for f in fields(cls)}
        for key, value in OPTION_DEFAULTS[augmentation].items():
            assert engine[key] == value, f"{augmentation}.{key}"


def test_spelled_out_defaults_share_a_run() -> None:
    tables = {
        "t": {
            "paper": "000_88efd4324cd49182.txt", "source": "T", "caption": "c", "metric": "top1",
            "pretrain": {"method": "mocov2", "augmentation": "sassl", "backbone": "resnet50", "dataset": "imagenet", "epochs": 100},
            "evaluation": {"protocol": "linear", "dataset": "imagenet"},
            "rows": {"implicit": {}, "explicit": {"pretrain": {"options": {"p": 0.8, "style_source": "in_batch"}}}},
            "columns": {"Top-1": {}},
        }
    }
    plan = build_plan(tables, "paper", scale("paper"))
    implicit, explicit = plan.cells["t"]
    assert [r.run_id for r in implicit.runs] == [r.run_id for r in explicit.runs]

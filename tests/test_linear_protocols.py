"""Each paper's own linear-probe protocol (issue #6): recipes in the scale configs, picked per table.

Plan level: every linear cell resolves to its paper's stated values, and different
protocols never share an evaluation id. Solver level (CPU, tiny encoder, seconds): the
Kornblith logistic solver picks its penalty on held-out data, LARS and the schedules run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import ROOT

from sslaug.evaluate.linear import (
    LinearConfig,
    build_linear_optimizer,
    logistic_probe,
    lr_lambda,
    train_linear,
)
from sslaug.plan import PlanError, build_plan, eval_spec
from sslaug.settings import apply_overrides

TABLES = yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())["tables"]


def scale(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config" / "scales" / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def paper_plan() -> Any:
    return build_plan(TABLES, "paper", scale("paper"))


def specs_of(plan: Any, table: str, sc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (cell.row, cell.column): eval_spec(cell.evaluation, sc)
        for cell in plan.cells[table]
        if cell.evaluation.protocol == "linear"
    }


# --------------------------------------------------------------------------- plan level


@pytest.mark.parametrize("table", ["clsa_table2", "clsa_table4"])
def test_clsa_cells_get_lr_10_for_100_epochs(paper_plan: Any, table: str) -> None:
    """004 Sec. 4.1: lr 10, no weight decay, cosine, batch 256, 100 epochs."""
    for spec in specs_of(paper_plan, table, scale("paper")).values():
        assert (spec["recipe"], spec["lr"], spec["epochs"], spec["batch_size"]) == ("clsa", 10.0, 100, 256)
        assert (spec["weight_decay"], spec["schedule"]) == (0.0, "cosine")


@pytest.mark.parametrize("table", ["gen_table9", "gen_table11", "gen_table12", "gen_table1"])
def test_generative_cells_get_lars_01_batch_512(paper_plan: Any, table: str) -> None:
    """002 Table 8: LARS, base lr 0.1, batch 512, wd 0, cosine; 100 epochs (45 for Places365)."""
    specs = specs_of(paper_plan, table, scale("paper"))
    assert specs
    for (_, column), spec in specs.items():
        assert (spec["optimizer"], spec["lr"], spec["batch_size"], spec["weight_decay"]) == ("lars", 0.1, 512, 0.0)
        assert spec["epochs"] == (45 if column == "Places365" else 100)
        assert apply_overrides(LinearConfig, spec).effective_lr == pytest.approx(0.2)


def test_msr_small_and_large_datasets_get_their_protocols(paper_plan: Any) -> None:
    """003 Sec. 4.1: MoCo v2's lr 30 / steps at 60, 80 on small sets; Mean Shift's 40 epochs on ImageNet(-100)."""
    specs = specs_of(paper_plan, "msr_table1", scale("paper"))
    for (_, column), spec in specs.items():
        if column == "ImageNet-100":
            assert (spec["recipe"], spec["epochs"], spec["lr"], spec["weight_decay"]) == ("msr_large", 40, 0.01, 1e-4)
            assert spec["milestones"] == [15, 30] and spec["batch_size"] == 256
        else:
            assert (spec["recipe"], spec["epochs"], spec["lr"], spec["weight_decay"]) == ("msr_small", 100, 30.0, 0.0)
            assert spec["schedule"] == "step" and spec["milestones"] == [60, 80]
    for table in ("msr_table3", "msr_table4"):
        assert {s["recipe"] for s in specs_of(paper_plan, table, scale("paper")).values()} == {"msr_large"}


def test_rescue_rows_follow_their_baselines_protocol(paper_plan: Any) -> None:
    """001: SimCLR rows SimCLR's protocol, MoCo v3 rows moco-v3's (lr 3 for ViTs), Table 1 Kornblith's."""
    specs = specs_of(paper_plan, "rescue_fig2", scale("paper"))
    by_row = {row: spec["recipe"] for (row, _), spec in specs.items()}
    assert by_row["SimCLR (ResNet-50)"] == by_row["Ours(SimCLR) (ResNet-50)"] == "simclr"
    assert by_row["MoCo v3 (ResNet-50)"] == "mocov3" and by_row["Ours(MoCo v3) (ViT-B)"] == "mocov3_vit"
    simclr = specs[("SimCLR (ResNet-50)", "Top-1")]
    assert simclr["nesterov"] and apply_overrides(LinearConfig, simclr).effective_lr == pytest.approx(1.6)
    vit = apply_overrides(LinearConfig, specs[("MoCo v3 (ViT-S)", "Top-1")])
    assert (vit.effective_lr, vit.epochs, vit.batch_size) == (pytest.approx(12.0), 90, 1024)
    for spec in specs_of(paper_plan, "rescue_table1", scale("paper")).values():
        assert (spec["solver"], spec["augment"], spec["logistic_lambdas"]) == ("logistic", False, [1e-6, 1e5, 45])


def test_sassl_uses_moco_v2_protocol(paper_plan: Any) -> None:
    for table in ("sassl_table1", "sassl_table2_linear", "sassl_table3"):
        for spec in specs_of(paper_plan, table, scale("paper")).values():
            assert (spec["recipe"], spec["lr"], spec["milestones"]) == ("sassl", 30.0, [60, 80])


def test_every_linear_cell_names_a_recipe(paper_plan: Any) -> None:
    """No paper table falls back to the scale's default protocol by accident."""
    missing = [
        (table, cell.row, cell.column)
        for table, cells in paper_plan.cells.items()
        for cell in cells
        if cell.evaluation.protocol == "linear" and "recipe" not in dict(cell.evaluation.options)
    ]
    assert missing == []


def test_every_recipe_builds_a_linear_config() -> None:
    """Every recipe of every scale is a valid LinearConfig (unknown keys or bad values raise)."""
    for name in ("cifar", "paper"):
        for recipe, settings in scale(name)["evaluations"]["linear"]["recipes"].items():
            assert apply_overrides(LinearConfig, {**settings, "recipe": recipe}).recipe == recipe


def test_different_recipes_give_different_evaluation_ids(paper_plan: Any) -> None:
    """The same dataset under two protocols (CIFAR-10: MSR's vs Kornblith's) is two evaluations."""
    ids = {
        dict(cell.evaluation.options)["recipe"]: cell.evaluation.eval_id
        for table in ("msr_table1", "rescue_table1")
        for cell in paper_plan.cells[table]
        if cell.evaluation.dataset == "cifar10"
    }
    assert ids == {"msr_small": "cifar10_recipe=msr_small", "kornblith": "cifar10_recipe=kornblith"}


def test_unknown_recipe_is_an_error_naming_table_and_key() -> None:
    tables = {
        "t": {
            **TABLES["clsa_table2"],
            "evaluation": {"protocol": "linear", "dataset": "imagenet", "options": {"recipe": "clas"}},
        }
    }
    with pytest.raises(PlanError, match=r"tables\.t .*recipe 'clas'.*evaluations\.linear\.recipes"):
        build_plan(tables, "paper", scale("paper"))


def test_mini_pins_one_probe_for_every_recipe() -> None:
    """Mini drops `recipe` from the id (ignore_options): one ridge probe per run serves every table."""
    mini = scale("mini")
    plan = build_plan(TABLES, "mini", mini)
    linear = {
        cell.evaluation for cells in plan.cells.values() for cell in cells if cell.evaluation.protocol == "linear"
    }
    assert linear and all("recipe" not in dict(ev.options) for ev in linear)
    assert {eval_spec(ev, mini)["solver"] for ev in linear} == {"ridge"}


def test_mini_job_count_does_not_grow() -> None:
    """The mini DAG keeps one linear probe per (dataset, run): recipes add no jobs there."""
    mini = scale("mini")
    plan = build_plan(TABLES, "mini", mini)
    jobs = {
        (cell.evaluation.eval_id, run.run_id)
        for cells in plan.cells.values()
        for cell in cells
        if cell.evaluation.protocol == "linear"
        for run in cell.runs
    }
    without_recipes = {
        (cell.evaluation.dataset + "".join(f"_{k}={v}" for k, v in cell.evaluation.options if k != "recipe"), r.run_id)
        for cells in plan.cells.values()
        for cell in cells
        if cell.evaluation.protocol == "linear"
        for r in cell.runs
    }
    assert len(jobs) == len(without_recipes)


# --------------------------------------------------------------------------- solvers


def separable_features(n_per_class: int = 40, classes: int = 4, dim: int = 16, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    centers = 4.0 * torch.randn(classes, dim, generator=gen)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = centers[labels] + torch.randn(len(labels), dim, generator=gen)
    return feats, labels


def test_logistic_picks_a_penalty_on_held_out_data_and_beats_chance() -> None:
    train_x, train_y = separable_features(seed=0)
    test_x, test_y = separable_features(n_per_class=25, seed=0)
    test_x = test_x + 0.1 * torch.randn_like(test_x)
    config = LinearConfig(solver="logistic", logistic_lambdas=(1e-4, 1e2, 7), val_fraction=0.25)
    logits, info = logistic_probe(train_x, train_y, test_x, 4, config, seed=0)
    grid = np.logspace(-4, 2, 7)
    assert np.isclose(grid, info["lambda"]).any()
    assert info["C"] == pytest.approx(1.0 / (info["lambda"] * len(train_y)))
    assert info["lambdas_tried"] == 7 and 0.0 <= info["val_top1"] <= 100.0
    accuracy = (logits.argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.9  # chance is 0.25


def test_logistic_avoids_a_penalty_that_erases_the_features() -> None:
    """Under a huge penalty the weights vanish and only the (unpenalised) intercept is left, which
    predicts the majority class; the held-out choice must pick a weaker penalty."""
    feats, labels = separable_features(n_per_class=20, seed=1)
    majority_x, majority_y = separable_features(n_per_class=60, seed=1)
    keep = majority_y == 0
    train_x, train_y = torch.cat([feats, majority_x[keep]]), torch.cat([labels, majority_y[keep]])
    config = LinearConfig(solver="logistic", logistic_lambdas=(1e-3, 1e6, 10))
    logits, info = logistic_probe(train_x, train_y, feats, 4, config, seed=0)
    assert info["lambda"] < 1e5 and info["val_top1"] > 90.0
    assert (logits.argmax(1) == labels).float().mean().item() > 0.9


def test_step_and_cosine_schedules() -> None:
    step = lr_lambda(LinearConfig(epochs=100, schedule="step", milestones=(60, 80)), steps_per_epoch=10)
    assert [step(s) for s in (0, 599, 600, 799, 800, 999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = lr_lambda(LinearConfig(epochs=10, schedule="cosine", warmup_epochs=2), steps_per_epoch=5)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(49) < 0.01
    with pytest.raises(ValueError, match="milestones"):
        LinearConfig(schedule="step")
    with pytest.raises(ValueError, match="optimizer"):
        LinearConfig(optimizer="adam")


def test_lars_adapts_the_weight_lr_at_zero_weight_decay() -> None:
    """timm's LARS through the engine: at wd 0 the weight's step is trust-scaled, the bias's is plain SGD."""
    torch.manual_seed(0)
    steps = {}
    for name in ("lars", "sgd"):
        torch.manual_seed(1)  # the same initial layer for both optimizers
        layer = nn.Linear(8, 3)
        config = LinearConfig(optimizer=name, lr=0.1, momentum=0.0, lars_trust_coeff=0.02, lars_trust_clip=True)
        optimizer = build_linear_optimizer(layer, config)
        before = [p.detach().clone() for p in layer.parameters()]
        layer(torch.randn(16, 8, generator=torch.Generator().manual_seed(2))).pow(2).sum().backward()
        optimizer.step()
        steps[name] = [(p.detach() - b).norm().item() for p, b in zip(layer.parameters(), before)]
    assert type(build_linear_optimizer(nn.Linear(2, 2), LinearConfig(optimizer="lars"))).__name__ == "Lars"
    assert steps["lars"][0] < steps["sgd"][0]  # the trust ratio (clipped at 1) shrinks the weight's step
    assert steps["lars"][1] == pytest.approx(steps["sgd"][1])  # bias: not adapted


class TinyEncoder(nn.Module):
    """A fixed random conv feature extractor over uint8-normalised images."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def colour_images(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes told apart by their dominant colour channel."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    images = torch.randint(0, 80, (len(labels), 3, 16, 16), generator=gen)
    images[torch.arange(len(labels)), labels] += 150
    return images.to(torch.uint8), labels


@pytest.mark.parametrize(
    "spec",
    [
        {
            "optimizer": "lars",
            "lr": 0.1,
            "base_batch_size": 256,
            "batch_size": 32,
            "epochs": 20,
            "lars_trust_coeff": 0.02,
            "lars_trust_clip": True,
            "augment": True,
        },
        {
            "lr": 1.0,
            "batch_size": 32,
            "epochs": 3,
            "weight_decay": 1e-4,
            "schedule": "step",
            "milestones": [2],
            "l2_normalize": True,
            "standardize": True,
            "augment": True,
        },
        {"lr": 0.5, "batch_size": 32, "epochs": 3, "nesterov": True, "batchnorm": True, "augment": False},
    ],
    ids=["lars-generative", "step-meanshift", "nesterov-batchnorm"],
)
def test_sgd_probe_paths_run_and_learn(spec: dict[str, Any]) -> None:
    torch.manual_seed(0)
    encoder = TinyEncoder().eval()
    train, test = colour_images(30, seed=0), colour_images(20, seed=1)
    info: dict[str, Any] = {}
    config = apply_overrides(LinearConfig, spec)
    metrics = train_linear(encoder, train, test, 3, config, torch.device("cpu"), seed=0, info=info)
    assert set(metrics) >= {"top1", "top5", "mean_class_acc", "map"}
    assert info["steps"] == config.epochs * 3 and info["lr"] == pytest.approx(config.effective_lr)
    assert metrics["top1"] > 50.0  # chance is 33%


@pytest.mark.slow
def test_logistic_recipe_through_the_cli(tmp_path: Path, mini_dataset: Path) -> None:
    """The rule's entry point with the Kornblith recipe: metrics and the penalty choice land in metrics.json."""
    from sslaug.models.backbones import build_backbone, encoder_state

    torch.manual_seed(0)
    encoder = tmp_path / "encoder.pt"
    torch.save(encoder_state(build_backbone("tiny"), "tiny", 32, {}), encoder)
    spec = {"recipe": "kornblith", "solver": "logistic", "augment": False, "logistic_lambdas": [1e-4, 1e2, 4]}
    out = tmp_path / "metrics.json"
    src = ROOT / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sslaug.evaluate.linear",
            "--encoder",
            str(encoder),
            "--data",
            str(mini_dataset),
            "--spec",
            json.dumps(spec),
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.read_text())
    assert result["config"]["recipe"] == "kornblith" and result["info"]["lambdas_tried"] == 4
    assert 0.0 <= result["metrics"]["top1"] <= 100.0 and "mean_class_acc" in result["metrics"]

"""Rescue Table 1's VOC2007 column: protocol voc07_cls with Kornblith et al.'s classifier and 11-point mAP.

VOC2007 is a multi-label COCO-format set, which the single-label linear probe cannot read;
the cell asks voc07_cls for its ``kornblith`` recipe (logistic regression per class,
11-point mAP), while CLSA Table 3 keeps voc07_cls's default (MoCo's linear SVMs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score

from sslaug.config import load_workflow_config
from sslaug.data.prepare import main as prepare
from sslaug.evaluate import voc07
from sslaug.io import atomic_torch_save
from sslaug.models.backbones import build_backbone, encoder_state
from sslaug.plan import eval_spec
from sslaug.settings import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
SCALES = ("mini", "cifar", "paper")


def test_eleven_point_ap_is_the_voc2007_interpolation() -> None:
    labels, scores = np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])
    # Precision 1 up to recall 0.5 (6 of the 11 points), then 2/3 up to recall 1 (5 points).
    assert voc07.eleven_point_ap(labels, scores) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    assert average_precision_score(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # all-point differs
    assert voc07.eleven_point_ap(np.array([0, 1]), np.array([0.1, 0.9])) == pytest.approx(1.0)
    assert voc07.eleven_point_ap(np.array([0, 0]), np.array([0.1, 0.9])) == 0.0


def test_logistic_classifier_and_lambda_grid() -> None:
    config = apply_overrides(
        voc07.VOC07Config, {"classifier": "logistic", "ap": "11point", "logistic_lambdas": [1e-6, 1e5, 45], "folds": 2}
    )
    grid = config.cost_grid(100)
    assert len(grid) == 45 and grid[0] == pytest.approx(1 / (1e-6 * 100)) and grid[-1] == pytest.approx(1 / (1e5 * 100))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = (x[:, :3] > 0).astype(np.int64)  # three classes, each read off one feature
    small = apply_overrides(voc07.VOC07Config, {"classifier": "logistic", "ap": "11point", "costs": [1.0], "folds": 2})
    assert voc07.svm_map(x[:60], y[:60], x[60:], y[60:], small) > 90.0
    with pytest.raises(ValueError, match="classifier must be 'svm', 'logistic' or 'sgd'"):
        voc07.VOC07Config(classifier="ridge")
    with pytest.raises(ValueError, match="ap must be"):
        voc07.VOC07Config(ap="5point")


def workflow(scale: str):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config = {**config, "scale": scale, "scales": {scale: f"config/scales/{scale}.yaml"}}
    return load_workflow_config(config, ROOT, ROOT / "workflow" / "schemas")


def cell(plan, table: str, column: str):
    return next(c for c in plan.cells[table] if c.column == column)


@pytest.mark.parametrize("scale", SCALES)
def test_rescue_voc2007_uses_kornblith_and_clsa_its_sgd_layer(scale: str) -> None:
    wf = workflow(scale)
    rescue = [c for c in wf.plan.cells["rescue_table1"] if c.column == "VOC2007"]
    assert rescue and all(c.evaluation.protocol == "voc07_cls" and c.metric == "map" for c in rescue)
    assert dict(rescue[0].evaluation.options) == {"recipe": "kornblith"}
    settings = apply_overrides(voc07.VOC07Config, eval_spec(rescue[0].evaluation, wf.scale))
    assert settings.classifier == "logistic" and settings.ap == "11point" and settings.recipe == "kornblith"
    # The other columns keep the linear probe.
    assert cell(wf.plan, "rescue_table1", "Cifar10").evaluation.protocol == "linear"
    clsa = cell(wf.plan, "clsa_table3", "VOC07 Accuracy").evaluation
    assert clsa.protocol == "voc07_cls" and clsa.dataset == rescue[0].evaluation.dataset
    clsa_settings = apply_overrides(voc07.VOC07Config, eval_spec(clsa, wf.scale))
    # CLSA 004 Sec. 4.1: a linear layer trained with SGD lr 0.05 (100 epochs at cifar / paper).
    assert clsa_settings.classifier == "sgd" and clsa_settings.lr == 0.05 and clsa_settings.ap == "all"
    assert clsa_settings.epochs == (10 if scale == "mini" else 100)
    if scale != "mini":
        assert settings.cost_grid(5011)[0] == pytest.approx(1 / (1e-6 * 5011))


def test_kornblith_voc07_cli_on_a_coco_set(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = tmp_path / "encoder.pt"
    atomic_torch_save(encoder_state(build_backbone("tiny"), "tiny", 32, {}), encoder)
    data = tmp_path / "mini_coco"
    assert prepare(["--dataset", "mini_coco", "--source", "generate", "--out", str(data)]) == 0
    out = tmp_path / "metrics.json"
    spec = json.dumps({"costs": [0.1, 1.0], "folds": 2, "image_size": 32, "classifier": "logistic", "ap": "11point",
                       "recipe": "kornblith"})  # fmt: skip
    argv = ["--encoder", str(encoder), "--data", str(data), "--test-split", "val", "--spec", spec, "--out", str(out)]
    assert voc07.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["protocol"] == "voc07_cls" and 0.0 <= result["metrics"]["map"] <= 100.0

"""CKA / OPD dissimilarity (002 Table 2): the measures, the bootstrap, the CLI, the plan and the table."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.linalg import orthogonal_procrustes

from sslaug.evaluate.similarity import (
    bootstrap_dissimilarities,
    cka_dissimilarity,
    linear_cka,
    orthogonal_procrustes_distance,
)
from sslaug.evaluate.similarity import main as similarity
from sslaug.io import atomic_torch_save
from sslaug.models.backbones import build_backbone, encoder_state
from sslaug.plan import PlanError, build_plan, eval_spec, partner_run
from sslaug.tables.aggregate import main as aggregate

from conftest import ROOT

TABLES = yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())["tables"]


def scale(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / "scales" / f"{name}.yaml").read_text())


def features(n: int = 60, p: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(p: int, seed: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# --------------------------------------------------------------------------- the measures


def test_identical_representations_have_zero_dissimilarity() -> None:
    x = features()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka_dissimilarity(x, x) == pytest.approx(0.0, abs=1e-12)
    assert orthogonal_procrustes_distance(x, x) == pytest.approx(0.0, abs=1e-10)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling_only() -> None:
    x, y = features(seed=0), features(p=5, seed=2)
    q = orthogonal(8)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ q, 0.5 * y) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert linear_cka(x + 10.0, y) == pytest.approx(linear_cka(x, y), abs=1e-12), "features are centred"
    # Not invariant to an arbitrary invertible map: the test would catch a measure that were.
    stretch = torch.diag(torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64))
    assert linear_cka(x, x @ stretch) < 0.9


def test_opd_is_zero_for_rotations_and_positive_for_unrelated_features() -> None:
    x = features()
    assert orthogonal_procrustes_distance(x, x @ orthogonal(8)) == pytest.approx(0.0, abs=1e-10)
    assert orthogonal_procrustes_distance(x, 5.0 * x) == pytest.approx(0.0, abs=1e-10), "Frobenius-normalised"
    unrelated = orthogonal_procrustes_distance(x, features(seed=3))
    assert 0.3 < unrelated <= 2.0
    assert cka_dissimilarity(x, features(seed=3)) > 0.3


def test_hand_checked_small_example() -> None:
    """X = 4 points on the axes, Y = only the first axis: worked out by hand.

    Centred already; ||X||_F^2 = 4, ||Y||_F^2 = 2, so after normalising X^T Y = [[1/sqrt2, 0], [0, 0]],
    X^T X = I / 2, Y^T Y = [[1, 0], [0, 0]]: CKA = (1/2) / (1/sqrt2 * 1) = 1/sqrt2, OPD = 2 - sqrt2.
    """
    x = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    y = np.array([[1.0, 0], [0, 0], [-1, 0], [0, 0]])
    assert linear_cka(x, y) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert cka_dissimilarity(x, y) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-12)
    assert orthogonal_procrustes_distance(x, y) == pytest.approx(2 - math.sqrt(2), abs=1e-12)


def _paper_formulas(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The paper's text, literally: A in R^{p x N}, centred and Frobenius-normalised; R from scipy."""
    a, b = x.T - x.T.mean(axis=1, keepdims=True), y.T - y.T.mean(axis=1, keepdims=True)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    fro = np.linalg.norm
    d_cka = 1 - fro(a @ b.T) ** 2 / (fro(a @ a.T) * fro(b @ b.T))
    r, _ = orthogonal_procrustes(a.T, b.T)  # argmin ||a.T r - b.T||: R = r.T in min ||B - R A||
    d_opd = fro(b - r.T @ a) ** 2
    return float(d_cka), float(d_opd)


def test_agrees_with_a_direct_numpy_implementation_of_the_paper_formulas() -> None:
    x = features(n=40, p=6, seed=4).numpy()
    y = (features(n=40, p=6, seed=4) @ orthogonal(6) + 0.7 * features(n=40, p=6, seed=5)).numpy()
    d_cka, d_opd = _paper_formulas(x, y)
    assert cka_dissimilarity(x, y) == pytest.approx(d_cka, abs=1e-10)
    assert orthogonal_procrustes_distance(x, y) == pytest.approx(d_opd, abs=1e-10)
    assert 0.05 < d_opd < 1.5 and 0.05 < d_cka < 0.9  # a real, not a degenerate, example


def test_constant_features_are_named() -> None:
    with pytest.raises(ValueError, match="constant"):
        linear_cka(np.ones((10, 3)), features(n=10, p=3).numpy())


def test_bootstrap_mean_and_interval() -> None:
    x = features(n=200)
    y = x @ orthogonal(8)[:, :6] + 0.8 * features(n=200, p=6, seed=7)
    est = bootstrap_dissimilarities(x, y, runs=50, seed=3)
    for name in ("cka", "opd"):
        e = est[name]
        assert e.low < e.mean < e.high and e.half_width > 0 and e.runs == 50
        assert e.low < e.full < e.high, f"{name}: the full-sample value lies inside its bootstrap interval"
    assert est["cka"].full == pytest.approx(cka_dissimilarity(x, y))
    again = bootstrap_dissimilarities(x, y, runs=50, seed=3)
    assert again["cka"] == est["cka"], "seeded"
    same = bootstrap_dissimilarities(x, x, runs=10)
    assert same["cka"].high == pytest.approx(0.0, abs=1e-12) and same["opd"].high == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny random encoders of different initialisation, in the encoder.pt format of pretraining."""
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path_factory.mktemp(f"enc{seed}") / "encoder.pt"
        atomic_torch_save(encoder_state(build_backbone("tiny"), "tiny", 32, {}), path)
        paths.append(path)
    return paths[0], paths[1]


def run_cli(encoder: Path, encoder_b: str, data: Path, out: Path, **spec: object) -> int:
    spec = {"bootstrap_runs": 20, "max_examples": 120, "batch_size": 64, **spec}
    return similarity(["--encoder", str(encoder), "--encoder-b", encoder_b, "--data", str(data),
                       "--test-split", "test", "--spec", json.dumps(spec), "--seed", "0", "--out", str(out)])  # fmt: skip


def test_cli_two_encoders_and_clip(encoders: tuple[Path, Path], mini_dataset: Path, tmp_path: Path) -> None:
    a, b = encoders
    out = tmp_path / "ab.json"
    assert run_cli(a, str(b), mini_dataset, out) == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert result["status"] == "ok" and result["protocol"] == "cka_opd"
    assert 0 < metrics["cka"] < 1 and 0 < metrics["opd"] < 2
    assert metrics["cka_ci_low"] <= metrics["cka"] <= metrics["cka_ci_high"]
    assert metrics["cka_ci95"] == pytest.approx((metrics["cka_ci_high"] - metrics["cka_ci_low"]) / 2)
    assert result["info"]["examples"] == 120 and result["info"]["dims"] == [64, 64]

    same = tmp_path / "aa.json"
    assert run_cli(a, str(a), mini_dataset, same) == 0  # same images in the same order on both sides
    assert json.loads(same.read_text())["metrics"]["cka"] == pytest.approx(0.0, abs=1e-9)

    clip = tmp_path / "clip.json"
    assert run_cli(a, "clip", mini_dataset, clip, clip_model="tiny-random") == 0
    result = json.loads(clip.read_text())
    assert result["info"]["encoder_b"]["kind"] == "clip" and result["info"]["dims"] == [64, 32]
    assert 0 < result["metrics"]["cka"] < 1


def test_cli_names_bad_input(encoders: tuple[Path, Path], mini_dataset: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    missing = tmp_path / "nope" / "encoder.pt"
    assert run_cli(encoders[0], str(missing), mini_dataset, tmp_path / "m.json") == 1
    assert str(missing) in capsys.readouterr().err
    assert run_cli(encoders[0], "clip", mini_dataset, tmp_path / "c.json", clip_model="no/such-clip") == 1
    assert "no/such-clip" in capsys.readouterr().err
    assert run_cli(encoders[0], "clip", mini_dataset, tmp_path / "s.json", bootstrap_runs=0) == 1
    assert "bootstrap_runs" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.json")), "no result file on error"


def test_tiny_clip_is_the_tiny_unclip_pipelines_conditioning_encoder() -> None:
    from sslaug.augment.generative_views import build_tiny_clip_image_encoder, build_tiny_unclip_pipeline

    encoder, processor = build_tiny_clip_image_encoder(0)
    pipe = build_tiny_unclip_pipeline(0)
    ours, theirs = encoder.state_dict(), pipe.image_encoder.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert processor.crop_size == pipe.feature_extractor.crop_size


# --------------------------------------------------------------------------- plan, workflow, table


def test_gen_table2_cells_are_real_evaluations_at_mini() -> None:
    mini = scale("mini")
    plan = build_plan(TABLES, "mini", mini)
    cells = {(c.row, c.column): c for c in plan.cells["gen_table2"]}
    assert len(cells) == 6 and all(c.gap_id == "" for c in cells.values()), "no placeholder left"
    seeds = {row: [r.seed for r in cells[(row, "CKA")].runs] for row in ("(SimCLR1, SimCLR2)", "(SimCLR1, CLIP)", "(SimCLR2, CLIP)")}
    assert seeds == {"(SimCLR1, SimCLR2)": [0], "(SimCLR1, CLIP)": [0], "(SimCLR2, CLIP)": [1]}
    pair = cells[("(SimCLR1, SimCLR2)", "OPD")]
    partner = partner_run(pair.runs[0], pair.evaluation, mini)
    assert partner is not None and partner.seed == 1 and partner.run_id in plan.runs
    assert partner_run(cells[("(SimCLR1, CLIP)", "CKA")].runs[0], cells[("(SimCLR1, CLIP)", "CKA")].evaluation, mini) is None
    assert cells[("(SimCLR1, CLIP)", "CKA")].evaluation == cells[("(SimCLR1, CLIP)", "OPD")].evaluation, "one job per row"
    spec = eval_spec(pair.evaluation, mini)
    assert "encoder_b" not in spec and "encoder_seeds" not in spec and spec["clip_model"] == "tiny-random"


def test_encoder_names_that_do_not_resolve_are_named() -> None:
    mini = scale("mini")
    tables = {"gen_table2": {**TABLES["gen_table2"], "rows": {"bad": {"evaluation": {"options": {"encoder_a": "simclr_seed1", "encoder_b": "simclr_seed3"}}}}}}
    with pytest.raises(PlanError, match="simclr_seed3"):
        build_plan(tables, "mini", mini)
    tables["gen_table2"]["rows"] = {"bad": {"evaluation": {"options": {"encoder_a": "clip", "encoder_b": "simclr_seed1"}}}}
    with pytest.raises(PlanError, match="encoder_a must be a pretraining run"):
        build_plan(tables, "mini", mini)


@pytest.mark.parametrize("scale_name", ["mini", "paper"])
def test_dry_run_has_one_similarity_job_per_row(scale_name: str) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(bin_dir / "snakemake"), f"results/{scale_name}/tables/gen_table2.md", "-n", "--forceall", "--quiet",
         "rules", "--nolock", "--config", f"scale={scale_name}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if len(line.split()) == 2}
    assert counts.get("representation_similarity") == "3"
    assert "placeholder_not_implemented" not in counts


def test_table_shows_the_bootstrap_interval(tmp_path: Path) -> None:
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"status": "ok", "metrics": {"cka": 0.4123, "cka_ci95": 0.0061, "opd": 0.0224}}))
    paper = tmp_path / "paper.csv"
    paper.write_text("table,row,column,value,std,source\nt,\"(SimCLR1, SimCLR2)\",CKA,0.395,0.006,Table 2\n")
    plan = {"table": "t", "scale": "mini", "paper": "002_a484f64d5b0479a0.txt", "source": "Table 2", "caption": "c",
            "rows": ["(SimCLR1, SimCLR2)"], "columns": ["CKA", "OPD"],
            "cells": [{"row": "(SimCLR1, SimCLR2)", "column": c, "metric": c.lower(), "protocol": "cka_opd",
                       "files": [str(metrics)], "runs": ["r"]} for c in ("CKA", "OPD")]}  # fmt: skip
    out_csv, out_md = tmp_path / "t.csv", tmp_path / "t.md"
    assert aggregate(["--plan", json.dumps(plan), "--paper-values", str(paper), "--csv", str(out_csv),
                      "--markdown", str(out_md)]) == 0  # fmt: skip
    rows = {r["column"]: r for r in csv.DictReader(open(out_csv))}
    assert rows["CKA"]["reproduced_mean"] == "0.412" and rows["CKA"]["reproduced_ci95"] == "0.006"
    assert rows["CKA"]["reproduced_std"] == "" and rows["CKA"]["paper_value"] == "0.395"
    assert rows["OPD"]["reproduced_ci95"] == "", "no interval reported, none shown"
    markdown = out_md.read_text()
    assert "**0.412 ± 0.006 (95% CI)** · paper 0.395 ± 0.006, Δ +0.017" in markdown
    assert "half-width of the evaluation's own 95% interval" in markdown

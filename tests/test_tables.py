"""Table aggregation: mean +- std over seeds beside the paper, and no fake numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sslaug.tables.aggregate import main as aggregate
from sslaug.tables.placeholder import main as placeholder


def write_metrics(path: Path, **metrics: float) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": "ok", "metrics": metrics}))
    return str(path)


@pytest.fixture
def paper_values(tmp_path: Path) -> Path:
    path = tmp_path / "paper_values.csv"
    path.write_text(
        "table,row,column,value,std,source\n"
        "t,SimCLR,Top-1,70.0,0.5,paper Table 1\n"
        "t,MoCo v2,Top-1,71.0,,paper Table 1\n"
        "t,SimCLR,Hours,,,figure only\n"
    )
    return path


def plan(cells: list[dict]) -> str:
    return json.dumps(
        {
            "table": "t",
            "scale": "mini",
            "paper": "000_0000000000000000.txt",
            "source": "Table 1",
            "caption": "a test table",
            "rows": ["SimCLR", "MoCo v2"],
            "columns": ["Top-1", "Hours"],
            "cells": cells,
        }
    )


def run(tmp_path: Path, paper_values: Path, cells: list[dict]) -> tuple[dict, str]:
    out_csv, out_md = tmp_path / "t.csv", tmp_path / "t.md"
    assert aggregate(["--plan", plan(cells), "--paper-values", str(paper_values), "--csv", str(out_csv), "--markdown", str(out_md)]) == 0
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(open(out_csv))}
    return rows, out_md.read_text()


def test_mean_std_over_seeds_beside_the_paper(tmp_path: Path, paper_values: Path) -> None:
    files = [write_metrics(tmp_path / f"s{i}.json", top1=v) for i, v in enumerate([68.0, 70.0, 72.0])]
    rows, markdown = run(tmp_path, paper_values, [
        {"row": "SimCLR", "column": "Top-1", "metric": "top1", "protocol": "linear", "files": files, "runs": ["a", "b", "c"]},
    ])
    row = rows[("SimCLR", "Top-1")]
    assert row["reproduced_mean"] == "70.00" and row["reproduced_std"] == "2.00" and row["seeds"] == "3"
    assert row["paper_value"] == "70.00" and row["paper_std"] == "0.50" and row["difference"] == "0.00"
    assert "**70.00 ± 2.00** · paper 70.00 ± 0.50" in markdown


def test_placeholder_never_yields_a_number(tmp_path: Path, paper_values: Path) -> None:
    gap = tmp_path / "gap.json"
    assert placeholder(["--reason", "not implemented yet: method mocov2 (issue #3)", "--out", str(gap)]) == 0
    rows, markdown = run(tmp_path, paper_values, [
        {"row": "MoCo v2", "column": "Top-1", "metric": "top1", "protocol": "linear", "files": [str(gap), str(gap)], "runs": ["x", "y"]},
    ])
    row = rows[("MoCo v2", "Top-1")]
    assert row["reproduced_mean"] == "" and row["difference"] == "" and row["seeds"] == "0"
    assert "method mocov2 (issue #3)" in row["status"]
    assert "— (not implemented yet: method mocov2 (issue #3)) · paper 71.00" in markdown


def test_one_missing_seed_metric_leaves_the_cell_empty(tmp_path: Path, paper_values: Path) -> None:
    ok = write_metrics(tmp_path / "ok.json", top1=50.0)
    other = write_metrics(tmp_path / "other.json", ap=10.0)
    rows, _ = run(tmp_path, paper_values, [
        {"row": "SimCLR", "column": "Top-1", "metric": "top1", "protocol": "linear", "files": [ok, other], "runs": ["a", "b"]},
    ])
    assert rows[("SimCLR", "Top-1")]["reproduced_mean"] == ""
    assert "does not report metric top1" in rows[("SimCLR", "Top-1")]["status"]


def test_training_time_comes_from_the_benchmark_file(tmp_path: Path, paper_values: Path) -> None:
    bench = tmp_path / "bench.tsv"
    bench.write_text("s\th:m:s\tmax_rss\n7200.0\t2:00:00\t100\n")
    rows, markdown = run(tmp_path, paper_values, [
        {"row": "SimCLR", "column": "Hours", "metric": "hours", "protocol": "training_time", "files": [str(bench)], "runs": ["a"]},
    ])
    row = rows[("SimCLR", "Hours")]
    assert row["reproduced_mean"] == "2.00" and row["reproduced_std"] == "" and row["paper_value"] == ""
    assert "**2.00** · paper n/a" in markdown

"""Sweep figures (rule plot_sweep): drawn from the aggregated CSV, honest when there is no number."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sslaug.config import ConfigError, load_workflow_config
from sslaug.tables.aggregate import main as aggregate
from sslaug.tables.placeholder import main as placeholder
from sslaug.tables.plot import layout, swept_value
from sslaug.tables.plot import main as plot

from conftest import ROOT

TABLES = yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())["tables"]
ROWS = ["Baseline", "k = 16", "k = 32", "k = 64"]


def figure_spec(**figure: object) -> dict:
    return {"table": "t_fig", "scale": "mini", "source": "Figure 6", "caption": "c", "metric": "top1",
            "rows": ROWS, "columns": ["Top-1"], "figure": {"x": "rows", "xlabel": "k", "baselines": ["Baseline"], **figure}}  # fmt: skip


def aggregated_csv(tmp_path: Path, files: dict[str, list[str]], paper: str = "") -> Path:
    """The real aggregation of a one-column sweep table whose cells read ``files``."""
    paper_values = tmp_path / "paper.csv"
    paper_values.write_text("table,row,column,value,std,source\n" + paper)
    plan = {"table": "t_fig", "scale": "mini", "paper": "001_9a6f22326c4191c2.txt", "source": "Figure 6",
            "caption": "c", "rows": ROWS, "columns": ["Top-1"],
            "cells": [{"row": r, "column": "Top-1", "metric": "top1", "protocol": "linear", "files": files[r],
                       "runs": ["x"] * len(files[r])} for r in ROWS]}  # fmt: skip
    out = tmp_path / "t_fig.csv"
    assert aggregate(["--plan", json.dumps(plan), "--paper-values", str(paper_values), "--csv", str(out),
                      "--markdown", str(tmp_path / "t_fig.md")]) == 0  # fmt: skip
    return out


def metrics(path: Path, top1: float) -> str:
    path.write_text(json.dumps({"status": "ok", "metrics": {"top1": top1}}))
    return str(path)


def test_swept_values_are_read_from_the_labels() -> None:
    assert swept_value("k = 64") == 64.0 and swept_value("beta_base = 0.3") == 0.3 and swept_value("s = 1e-2") == 0.01
    assert swept_value("Baseline (100 ep)") is None and swept_value("One View Top-1") is None


def test_plot_of_numbers_beside_the_paper(tmp_path: Path) -> None:
    files = {r: [metrics(tmp_path / f"{i}a.json", 50.0 + i), metrics(tmp_path / f"{i}b.json", 52.0 + i)]
             for i, r in enumerate(ROWS)}  # fmt: skip
    csv_path = aggregated_csv(tmp_path, files, paper="t_fig,k = 64,Top-1,70.3,,Figure 6\nt_fig,Baseline,Top-1,69.1,,text\n")
    out = tmp_path / "fig" / "t_fig.svg"
    assert plot(["--csv", str(csv_path), "--figure", json.dumps(figure_spec(xscale="log")), "--out", str(out)]) == 0
    svg = out.read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and len(svg) > 5000
    for text in ("Top-1 (ours)", "Top-1 (paper)", "Baseline, Top-1 (ours)", "t_fig (Figure 6, scale mini)"):
        assert text in svg, text
    assert "No numbers yet" not in svg and "ours missing" not in svg
    # Same numbers, same file (no date, stable ids): reruns do not churn the report.
    again = tmp_path / "again.svg"
    assert plot(["--csv", str(csv_path), "--figure", json.dumps(figure_spec(xscale="log")), "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    png = tmp_path / "t_fig.png"
    assert plot(["--csv", str(csv_path), "--figure", json.dumps(figure_spec()), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_without_numbers_gives_a_plot_that_says_so(tmp_path: Path) -> None:
    gap = tmp_path / "gap.json"
    assert placeholder(["--reason", "not implemented yet: method dinov2 (issue #3)", "--out", str(gap)]) == 0
    csv_path = aggregated_csv(tmp_path, {r: [str(gap)] for r in ROWS})
    out = tmp_path / "t_fig.svg"
    assert plot(["--csv", str(csv_path), "--figure", json.dumps(figure_spec()), "--out", str(out)]) == 0
    svg = out.read_text()
    assert "No numbers yet" in svg and "method dinov2 (issue #3)" in svg


def test_partly_missing_cells_are_listed_with_their_status(tmp_path: Path) -> None:
    gap = tmp_path / "gap.json"
    assert placeholder(["--reason", "not implemented yet: option k (issue #4)", "--out", str(gap)]) == 0
    files = {r: [metrics(tmp_path / f"{i}.json", 60.0 + i)] for i, r in enumerate(ROWS)}
    files["k = 32"] = [str(gap)]
    out = tmp_path / "t_fig.svg"
    assert plot(["--csv", str(aggregated_csv(tmp_path, files)), "--figure", json.dumps(figure_spec()), "--out", str(out)]) == 0
    svg = out.read_text()
    assert "ours missing" in svg and "k = 32 | Top-1" in svg and "No numbers yet" not in svg


def test_bad_figure_spec_is_named_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv_path = aggregated_csv(tmp_path, {r: [metrics(tmp_path / f"{i}.json", 1.0)] for i, r in enumerate(ROWS)})
    out = tmp_path / "bad.svg"
    assert plot(["--csv", str(csv_path), "--figure", json.dumps(figure_spec(series=["Top-5"])), "--out", str(out)]) == 1
    assert "tables.t_fig.figure.series" in capsys.readouterr().err and not out.exists()


def test_the_papers_sweep_figures_are_declared() -> None:
    declared = {t for t, spec in TABLES.items() if spec.get("figure")}
    assert declared == {"gen_table11", "msr_fig3"} | {f"rescue_fig{n}_{m}" for n in (5, 6) for m in ("simclr", "mocov3", "dinov2")}
    for table in declared:
        spec = {"table": table, "rows": list(TABLES[table]["rows"]), "columns": list(TABLES[table]["columns"]),
                "figure": TABLES[table]["figure"]}  # fmt: skip
        swept, baselines, series, numeric = layout(spec)
        assert numeric and len(swept) >= 5, f"{table}: the swept values read as numbers"


def test_figure_naming_an_unknown_row_fails_before_any_job(tmp_path: Path) -> None:
    for name in ("config", "workflow"):
        shutil.copytree(ROOT / name, tmp_path / name)
    tables_path = tmp_path / "config" / "tables.yaml"
    tables = yaml.safe_load(tables_path.read_text())
    tables["tables"]["msr_fig3"]["figure"]["baselines"] = ["BYOL"]
    tables_path.write_text(yaml.safe_dump(tables, sort_keys=False))
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=r"config/tables.yaml: tables.msr_fig3.figure.baselines: \['BYOL'\]"):
        load_workflow_config(config, tmp_path, tmp_path / "workflow" / "schemas")

"""Aggregate one paper table: reproduced mean +- std over seeds beside the paper's value.

    python -m sslaug.tables.aggregate --plan JSON --paper-values CSV --csv OUT.csv --markdown OUT.md

A cell's number comes only from finished evaluations (``status: ok``); a placeholder,
a missing metric or a failed seed leaves the cell without a number and says why.
Where a cell has one evaluation that reports its own 95% interval (``<metric>_ci95``,
the half-width: CKA/OPD's bootstrap, 002 Table 2), that interval is the cell's error bar.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslaug.io import atomic_write_text

SECONDS_PER_HOUR = 3600.0
#: Decimals per metric where the papers give more than two (CKA / OPD dissimilarities: 0.395).
METRIC_DIGITS = {"cka": 3, "opd": 3}


@dataclass
class CellResult:
    """Reproduced values of one cell over seeds, or why there are none."""

    values: list[float] = field(default_factory=list)
    status: str = "ok"
    #: Half-width of the 95% interval the evaluation itself reports (one evaluation only).
    ci95: float | None = None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values and self.status == "ok" else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None with a single seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 and self.status == "ok" else None


def read_cell_value(path: Path, metric: str, protocol: str) -> tuple[float | None, str]:
    """One seed's value of ``metric`` from an evaluation's metrics.json or a benchmark TSV."""
    if path.suffix == ".tsv":  # training time, from Snakemake's benchmark of the pretrain job
        with open(path, newline="") as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        if metric != "hours":
            return None, f"metric {metric} not available from a benchmark file"
        return float(row["s"]) / SECONDS_PER_HOUR, "ok"
    result = json.loads(path.read_text())
    if result.get("status") != "ok":
        return None, result.get("reason", result.get("status", "unknown status"))
    value = result.get("metrics", {}).get(metric)
    if value is None:
        return None, f"protocol {protocol} does not report metric {metric}"
    value = float(value)
    if not math.isfinite(value):
        return None, f"metric {metric} is not finite in {path}"
    return value, "ok"


def read_cell_interval(path: Path, metric: str) -> float | None:
    """The 95% interval half-width an evaluation reports for ``metric`` (``<metric>_ci95``), if any."""
    if path.suffix != ".json":
        return None
    value = json.loads(path.read_text()).get("metrics", {}).get(f"{metric}_ci95")
    return float(value) if value is not None and math.isfinite(float(value)) else None


def collect(cell: dict[str, Any]) -> CellResult:
    result = CellResult()
    for file in cell["files"]:
        value, status = read_cell_value(Path(file), cell["metric"], cell["protocol"])
        if value is None:
            return CellResult(status=status)
        result.values.append(value)
    if len(cell["files"]) == 1:
        result.ci95 = read_cell_interval(Path(cell["files"][0]), cell["metric"])
    return result


def read_paper_values(path: Path, table: str) -> dict[tuple[str, str], tuple[float | None, float | None, str]]:
    """(row, column) -> (value, std, source) for one table."""
    values = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["table"] != table:
                continue
            value = float(row["value"]) if row["value"].strip() else None
            std = float(row["std"]) if row["std"].strip() else None
            values[(row["row"], row["column"])] = (value, std, row["source"])
    return values


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def build_rows(plan: dict[str, Any], paper: dict) -> list[dict[str, str]]:
    rows = []
    for cell in plan["cells"]:
        result = collect(cell)
        paper_value, paper_std, source = paper.get((cell["row"], cell["column"]), (None, None, ""))
        mean = result.mean
        diff = mean - paper_value if mean is not None and paper_value is not None else None
        digits = METRIC_DIGITS.get(cell["metric"], 2)
        rows.append(
            {
                "row": cell["row"],
                "column": cell["column"],
                "metric": cell["metric"],
                "reproduced_mean": _fmt(mean, digits),
                "reproduced_std": _fmt(result.std, digits),
                "reproduced_ci95": _fmt(result.ci95 if mean is not None else None, digits),
                "seeds": str(len(result.values)) if mean is not None else "0",
                "paper_value": _fmt(paper_value, digits),
                "paper_std": _fmt(paper_std, digits),
                "difference": _fmt(diff, digits),
                "status": result.status,
                "paper_source": source,
                "runs": " ".join(cell["runs"]),
            }
        )
    return rows


def to_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["row"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell_text(row: dict[str, str]) -> str:
    paper = row["paper_value"] or "n/a"
    if row["paper_std"]:
        paper += f" ± {row['paper_std']}"
    if row["status"] != "ok":
        return f"— ({row['status']}) · paper {paper}"
    ours = row["reproduced_mean"] + (f" ± {row['reproduced_std']}" if row["reproduced_std"] else "")
    if row.get("reproduced_ci95"):
        ours += f" ± {row['reproduced_ci95']} (95% CI)"
    digits = METRIC_DIGITS.get(row["metric"], 2)
    diff = f", Δ {float(row['difference']):+.{digits}f}" if row["difference"] else ""
    return f"**{ours}** · paper {paper}{diff}"


def to_markdown(plan: dict[str, Any], rows: list[dict[str, str]]) -> str:
    by_cell = {(r["row"], r["column"]): r for r in rows}
    columns = plan["columns"]
    seeds = {r["seeds"] for r in rows if r["status"] == "ok"}
    lines = [
        f"# {plan['table']}: {plan['caption']}",
        "",
        f"{plan['source']} of `{plan['paper']}`, reproduced at scale **{plan['scale']}**. "
        "Cells: **ours mean ± sample std over seeds** · paper value, Δ = ours − paper. "
        "A cell without a number says why."
        + (
            " Cells marked (95% CI): ± is the half-width of the evaluation's own 95% interval "
            "(bootstrap over the examples), the paper's ± likewise."
            if any(r.get("reproduced_ci95") for r in rows)
            else ""
        ),
        "",
        f"Seeds per cell: {', '.join(sorted(seeds)) or 'none finished'}.",
        "",
        "| | " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row_label in plan["rows"]:
        texts = []
        for column in columns:
            cell = by_cell.get((row_label, column))
            texts.append("" if cell is None else _cell_text(cell).replace("|", "\\|"))
        lines.append(f"| {row_label.replace('|', chr(92) + '|')} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", required=True, help="the table's cells (JSON, from the workflow)")
    parser.add_argument("--paper-values", required=True, type=Path)
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--markdown", required=True, type=Path)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan)
    rows = build_rows(plan, read_paper_values(args.paper_values, plan["table"]))
    atomic_write_text(args.csv, to_csv(rows))
    atomic_write_text(args.markdown, to_markdown(plan, rows))
    done = sum(r["status"] == "ok" for r in rows)
    print(f"{plan['table']}: {done}/{len(rows)} cells reproduced")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

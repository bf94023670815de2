"""Draw a sweep table (a paper figure) from its aggregated CSV: ours mean ± std beside the paper's values.

    python -m sslaug.tables.plot --csv results/<scale>/tables/<table>.csv --figure JSON --out <table>.svg

``--figure`` is the table's ``figure`` entry of config/tables.yaml plus its id, caption,
source, rows and columns (the workflow passes it). ``figure.x`` names the axis whose
labels are the swept values (``rows`` or ``columns``), each read from ``name = value``;
the other axis gives one series per label (``figure.series`` to pick some). Labels in
``figure.baselines`` are drawn as horizontal reference lines. Our values are solid with
error bars (the sample std over seeds, or the evaluation's 95% interval); the paper's
are dashed with hollow markers. Cells without a number are listed under the plot with
their status, and a table with no number at all gives a figure that says so.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslaug.io import atomic_write_bytes

_VALUE = re.compile(r"=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class FigureError(ValueError):
    """The figure spec does not match its table; the message names the table and key."""


@dataclass(frozen=True)
class Point:
    """One cell of the sweep: ours and the paper's value (None where there is none)."""

    mean: float | None
    error: float | None
    paper: float | None
    paper_error: float | None
    status: str


def swept_value(label: str) -> float | None:
    """The number of a ``name = value`` label (``"k = 64"`` -> 64.0), else None."""
    match = _VALUE.search(label)
    return float(match.group(1)) if match else None


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def read_points(csv_path: str | Path) -> dict[tuple[str, str], Point]:
    """(row, column) -> :class:`Point` from an aggregated table CSV (sslaug.tables.aggregate)."""
    points = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for line in csv.DictReader(f):
            # Error bar: the seeds' std, else the evaluation's own interval (CKA/OPD bootstrap).
            error = _number(line.get("reproduced_std")) or _number(line.get("reproduced_ci95"))
            points[(line["row"], line["column"])] = Point(
                mean=_number(line.get("reproduced_mean")),
                error=error,
                paper=_number(line.get("paper_value")),
                paper_error=_number(line.get("paper_std")),
                status=line.get("status", ""),
            )
    return points


def _check_labels(spec: dict[str, Any], key: str, labels: Sequence[str], axis: str) -> list[str]:
    chosen = list(spec["figure"].get(key) or [])
    unknown = [label for label in chosen if label not in labels]
    if unknown:
        raise FigureError(
            f"tables.{spec['table']}.figure.{key}: {unknown} are not {axis} of the table ({list(labels)})"
        )
    return chosen


def layout(spec: dict[str, Any]) -> tuple[list[str], list[str], list[str], bool]:
    """(swept labels, baseline labels, series labels, numeric x) of a figure spec."""
    figure = spec["figure"]
    if figure.get("x") not in ("rows", "columns"):
        raise FigureError(f"tables.{spec['table']}.figure.x: expected 'rows' or 'columns', got {figure.get('x')!r}")
    other = "columns" if figure["x"] == "rows" else "rows"
    x_labels, other_labels = list(spec[figure["x"]]), list(spec[other])
    baselines = _check_labels(spec, "baselines", x_labels, figure["x"])
    series = _check_labels(spec, "series", other_labels, other) or other_labels
    swept = [label for label in x_labels if label not in baselines]
    numeric = all(swept_value(label) is not None for label in swept)
    return swept, baselines, series, numeric


def _cell(points: dict[tuple[str, str], Point], spec: dict[str, Any], x_label: str, series: str) -> Point | None:
    key = (x_label, series) if spec["figure"]["x"] == "rows" else (series, x_label)
    return points.get(key)


def draw(points: dict[tuple[str, str], Point], spec: dict[str, Any]) -> Any:
    """The matplotlib figure of one sweep table."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "sslaug"  # stable element ids: same numbers, same file
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, and a smaller file
    import matplotlib.pyplot as plt

    figure = spec["figure"]
    swept, baselines, series, numeric = layout(spec)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    xs = [swept_value(label) for label in swept] if numeric else list(range(len(swept)))
    missing: dict[str, list[str]] = {}
    drawn = 0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(series):
        color = colors[i % len(colors)]
        cells = [_cell(points, spec, label, name) for label in swept]
        for label, cell in zip(swept, cells):
            if cell is None or cell.mean is None:
                missing.setdefault(cell.status if cell else "no cell in the CSV", []).append(f"{label} | {name}")
        ours = [(x, c.mean, c.error or 0.0) for x, c in zip(xs, cells) if c is not None and c.mean is not None]
        paper = [(x, c.paper, c.paper_error or 0.0) for x, c in zip(xs, cells) if c is not None and c.paper is not None]
        if ours:
            ax.errorbar(*zip(*ours), color=color, marker="o", capsize=3, label=f"{name} (ours)")
        if paper:
            ax.errorbar(*zip(*paper), color=color, marker="s", mfc="none", linestyle="--", capsize=3,
                        label=f"{name} (paper)")  # fmt: skip
        drawn += len(ours) + len(paper)
        for j, label in enumerate(baselines):
            cell = _cell(points, spec, label, name)
            if cell is None or cell.mean is None:
                missing.setdefault(cell.status if cell else "no cell in the CSV", []).append(f"{label} | {name}")
            for value, style, who in (
                (cell and cell.mean, ("-", "-.", ":")[j % 3], "ours"),
                (cell and cell.paper, "--", "paper"),
            ):
                if value is not None:
                    ax.axhline(value, color=color, linestyle=style, linewidth=0.8, alpha=0.5 + 0.5 / (j + 1),
                               label=f"{label}, {name} ({who})")  # fmt: skip
                    drawn += 1
    if not numeric:
        ax.set_xticks(xs, swept, rotation=30, ha="right")
    else:
        if figure.get("xscale") == "log":
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])  # ticks at the swept values, in the paper's numbers
        ax.minorticks_off()
    ax.set_xlabel(figure.get("xlabel") or figure["x"])
    ax.set_ylabel(figure.get("ylabel") or spec.get("metric") or "value")
    ax.set_title("\n".join(textwrap.wrap(f"{spec['table']} ({spec.get('source', '')}, scale {spec.get('scale', '?')})",
                                         70)), fontsize=10)  # fmt: skip
    if drawn == 0:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "No numbers yet: neither reproduced nor stated in the paper",
                ha="center", va="center", transform=ax.transAxes, fontsize=11)  # fmt: skip
    else:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    notes = [f"ours missing ({status}): {', '.join(cells)}" for status, cells in missing.items()]
    if drawn and not any(p.paper is not None for p in points.values()):
        notes.append("paper: no value stated in the text (figure only)")
    if notes:
        text = "\n".join(textwrap.fill(n, 110, max_lines=3, placeholder=" ...") for n in notes[:4])
        fig.text(0.01, 0.0, text, fontsize=6, va="bottom", ha="left")
        bottom = 0.04 * min(len(notes), 4) + 0.04
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))  # (left, bottom, width, height)
    return fig


def render(csv_path: str | Path, spec: dict[str, Any], out: str | Path) -> int:
    """Draw the figure of ``csv_path`` into ``out`` (format from its suffix: svg, png, pdf), atomically.

    Returns the number of cells with a reproduced number.
    """
    import matplotlib.pyplot as plt

    points = read_points(csv_path)
    fig = draw(points, spec)
    buffer = io.BytesIO()
    fmt = Path(out).suffix.lstrip(".") or "svg"
    fig.savefig(buffer, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return sum(p.mean is not None for p in points.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True, type=Path, help="aggregated table CSV")
    parser.add_argument("--figure", required=True, help="the table's figure spec with its rows and columns (JSON)")
    parser.add_argument("--out", required=True, type=Path, help="figure file (.svg, .png or .pdf)")
    args = parser.parse_args(argv)
    spec = json.loads(args.figure)
    try:
        done = render(args.csv, spec, args.out)
    except (FigureError, FileNotFoundError, KeyError) as err:
        print(f"plot: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"{spec['table']}: figure with {done} reproduced cells -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

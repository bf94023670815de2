"""Load and validate the workflow configuration before any job runs.

Every error names the file and the path inside it, e.g.
``config/scales/mini.yaml: methods.simclr.train.batch_size: 'x' is not of type 'integer'``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from sslaug.plan import Plan, PlanError, build_plan


class ConfigError(ValueError):
    """A configuration file is invalid; the message names the file and key path."""


def _format_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def validate(instance: Any, schema_path: Path, source: str) -> None:
    """Validate against a YAML JSON-schema; raise one ConfigError naming the deepest failing path."""
    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        raise ConfigError(f"{source}: {_format_path(error.absolute_path)}: {error.message}")


def load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file missing: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


@dataclass
class WorkflowConfig:
    """The validated configuration of one scale, and its resolved plan."""

    scale_name: str
    scale: dict[str, Any]
    tables: dict[str, Any]
    paper_values: Path
    plan: Plan


def load_workflow_config(config: Mapping[str, Any], root: Path, schemas: Path) -> WorkflowConfig:
    """Validate config.yaml, the chosen scale file and the tables; build and cross-check the plan."""
    validate(dict(config), schemas / "config.schema.yaml", "config")
    scale_name = config["scale"]
    if scale_name not in config["scales"]:
        raise ConfigError(f"config: scale: {scale_name!r} is not one of {sorted(config['scales'])}")
    scale_path = root / config["scales"][scale_name]
    scale = load_yaml(scale_path)
    validate(scale, schemas / "scale.schema.yaml", str(config["scales"][scale_name]))
    for name, root in (config.get("dataset_roots") or {}).items():
        if name in scale["datasets"]:
            scale["datasets"][name]["root"] = root
    tables_path = root / config["tables"]
    tables = load_yaml(tables_path)
    validate(tables, schemas / "tables.schema.yaml", str(config["tables"]))
    paper_values = root / config["paper_values"]
    if not paper_values.is_file():
        raise ConfigError(f"config: paper_values: file missing: {paper_values}")
    try:
        plan = build_plan(tables["tables"], scale_name, scale)
    except PlanError as err:
        raise ConfigError(f"{config['tables']}: {err}") from err
    _cross_check(plan, scale, str(config["scales"][scale_name]))
    _check_paper_values(paper_values, tables["tables"])
    _check_figures(tables["tables"], str(config["tables"]))
    return WorkflowConfig(scale_name, scale, tables["tables"], paper_values, plan)


def _cross_check(plan: Plan, scale: Mapping[str, Any], source: str) -> None:
    """Every dataset the plan needs is declared, every trainable method has settings."""
    needed = {run.dataset for run in plan.runs.values()}
    needed |= {cell.evaluation.dataset for cells in plan.cells.values() for cell in cells}
    for dataset in sorted(needed):
        if dataset not in scale["datasets"]:
            raise ConfigError(f"{source}: datasets: {dataset!r} is used by a table but not declared")
    for run in plan.runs.values():
        if run.gaps:
            continue
        if run.method not in scale["methods"]:
            raise ConfigError(f"{source}: methods: no settings for {run.method!r} (used by {run.run_id})")
        if run.augmentation == "sassl" and "stylizer" not in scale:
            raise ConfigError(f"{source}: stylizer: missing (SASSL run {run.run_id})")
        if run.generator and run.generator not in scale.get("generative", {}).get("models", {}):
            raise ConfigError(f"{source}: generative.models: no model for {run.generator!r} (run {run.run_id})")
        if run.style_source and run.style_source not in scale["datasets"]:
            raise ConfigError(f"{source}: datasets: style set {run.style_source!r} is not declared")
        if "image_size" not in scale["datasets"][run.dataset]:
            raise ConfigError(f"{source}: datasets.{run.dataset}: image_size missing (pretraining uses it)")


def _check_figures(tables: Mapping[str, Any], source: str) -> None:
    """Every sweep figure names rows and columns its table has (before any job runs)."""
    from sslaug.tables.plot import FigureError, layout

    for table_id, table in tables.items():
        if table.get("figure"):
            spec = {"table": table_id, "rows": list(table["rows"]), "columns": list(table["columns"])}
            try:
                layout({**spec, "figure": table["figure"]})
            except FigureError as err:
                raise ConfigError(f"{source}: {err}") from err


def _check_paper_values(path: Path, tables: Mapping[str, Any]) -> None:
    """Every paper value points at an existing table, row and column."""
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            table = tables.get(row["table"])
            where = f"{path.name}:{line}"
            if table is None:
                raise ConfigError(f"{where}: unknown table {row['table']!r}")
            if row["row"] not in table["rows"]:
                raise ConfigError(f"{where}: table {row['table']!r} has no row {row['row']!r}")
            if row["column"] not in table["columns"]:
                raise ConfigError(f"{where}: table {row['table']!r} has no column {row['column']!r}")

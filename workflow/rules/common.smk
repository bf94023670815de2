# Helpers shared by all stages; the validated config, the resolved plan of runs
# and cells, and the input/params functions the rules call (no logic in the rules).
import json
import sys
from pathlib import Path

ROOT = Path(workflow.basedir)
# The workflow and all its jobs (local, conda env or SLURM) import sslaug from this checkout.
sys.path.insert(0, str(ROOT / "src"))
shell.prefix(f"export PYTHONPATH={ROOT / 'src'}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")

from sslaug.config import load_workflow_config  # noqa: E402
from sslaug.plan import (
    PRETRAIN_PROTOCOLS,
    Evaluation,
    eval_spec,
    eval_split_name,
    gap_reason,
    partner_run,
    run_spec,
)  # noqa: E402

# Config files are relative to the working directory, as Snakemake resolves configfile.
WF = load_workflow_config(config, Path.cwd(), ROOT / "workflow" / "schemas")
SCALE = WF.scale_name
SCALE_CFG = WF.scale
PLAN = WF.plan
RESULTS = f"results/{SCALE}"
EVALUATIONS = {
    (cell.evaluation.protocol, cell.evaluation.eval_id): cell.evaluation
    for cells in PLAN.cells.values()
    for cell in cells
}


# ---------------------------------------------------------------- resources
def resource(rule_name, key):
    """A rule's resource from the scale config (`resources.<rule>`, else `default`)."""
    table = SCALE_CFG["resources"]
    value = table.get(rule_name, {}).get(key, table["default"].get(key))
    if value is None:
        raise ValueError(f"resources.default.{key} missing in the {SCALE} scale config")
    return value


def runtime_for(rule_name):
    """Resource function: the rule's runtime, longer on each retry (attempt 2 gets twice it)."""

    def runtime(wildcards, attempt):
        return resource(rule_name, "runtime") * attempt

    runtime.__name__ = f"{rule_name}_runtime"
    return runtime


def pretrain_gpus(wildcards):
    return resource("pretrain", "gpu")


def launcher(wildcards):
    """torchrun with one process per GPU when a job has several, else plain python."""
    gpus = pretrain_gpus(wildcards)
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus}"
    return "python"


# ---------------------------------------------------------------- datasets
def dataset_dir(name):
    return f"data/{name}"


def dataset_settings(wildcards):
    if wildcards.dataset not in SCALE_CFG["datasets"]:
        raise ValueError(
            f"dataset {wildcards.dataset!r} is not declared in the {SCALE} scale config"
        )
    return SCALE_CFG["datasets"][wildcards.dataset]


def prepare_arguments(wildcards):
    """`--source`, `--root` and `--option` flags of the preparation for one dataset."""
    settings = dataset_settings(wildcards)
    args = ["--source", settings["source"]]
    if "root" in settings:
        args += ["--root", settings["root"]]
    for key, value in sorted(settings.get("options", {}).items()):
        args += ["--option", f"{key}={value}"]
    return " ".join(args)


# ---------------------------------------------------------------- pretraining
def run_of(wildcards):
    if wildcards.run not in PLAN.runs:
        raise ValueError(
            f"run {wildcards.run!r} is not part of any table at scale {SCALE}"
        )
    return PLAN.runs[wildcards.run]


def generative_views_dir(run):
    return f"{RESULTS}/generative_views/{run.generator}/{run.dataset}"


def pretrain_inputs(wildcards):
    """The prepared dataset, plus style features (SASSL, external styles) or generative views."""
    run = run_of(wildcards)
    inputs = {"data": dataset_dir(run.dataset)}
    if run.style_source:
        inputs["style_features"] = f"{RESULTS}/style_features/{run.style_source}.pt"
    if run.augmentation == "sassl":  # the stylizer runs inside pretraining too
        inputs["stylizer"] = stylizer_weights_input(wildcards)
    if run.generator:
        shards = SCALE_CFG["generative"]["num_shards"]
        inputs["generative_views"] = [
            f"{generative_views_dir(run)}/shard{shard}/manifest.json"
            for shard in range(shards)
        ]
    return inputs


def pretrain_extra_arguments(wildcards):
    run = run_of(wildcards)
    args = []
    if run.style_source:
        args += ["--style-features", f"{RESULTS}/style_features/{run.style_source}.pt"]
    if run.generator:
        args += ["--generative-views", generative_views_dir(run)]
    return " ".join(args)


def pretrain_spec(wildcards):
    """The resolved run specification handed to sslaug.engine.pretrain (JSON)."""
    return json.dumps(run_spec(run_of(wildcards), SCALE, SCALE_CFG), sort_keys=True)


def pretrain_run_dir(wildcards):
    return f"{RESULTS}/pretrain/{wildcards.run}"


# ---------------------------------------------------------------- precompute
def stylizer_setting(key):
    """Params function: one setting of the scale's SASSL stylizer."""

    def setting(wildcards):
        defaults = {"batch_size": 64, "max_style_images": 0}  # 0: every style image
        return SCALE_CFG["stylizer"].get(key, defaults.get(key))

    setting.__name__ = f"stylizer_{key}"
    return setting


def stylizer_config(wildcards):
    return json.dumps(SCALE_CFG["stylizer"].get("config", {}), sort_keys=True)


def stylizer_weights_input(wildcards):
    """Input function: the converted stylizer weights (none for mini's random stylizer)."""
    weights = SCALE_CFG.get("stylizer", {}).get("weights", "random")
    return [] if weights == "random" else [weights]


def magenta_checkpoint(wildcards):
    """Params function: `stylizer.magenta_checkpoint`, else the released Magenta archive."""
    from sslaug.augment.stylizer_convert import MAGENTA_URL

    return SCALE_CFG.get("stylizer", {}).get("magenta_checkpoint", MAGENTA_URL)


def generative_setting(key):
    """Params function: one generative-views setting of the scale."""

    def setting(wildcards):
        defaults = {"batch_size": 8, "steps": 10}
        return SCALE_CFG["generative"].get(key, defaults.get(key))

    setting.__name__ = f"generative_{key}"
    return setting


def generator_model(wildcards):
    models = SCALE_CFG["generative"]["models"]
    if wildcards.generator not in models:
        raise ValueError(
            f"generative.models has no model for {wildcards.generator!r} at scale {SCALE}"
        )
    return models[wildcards.generator]


def generator_env(wildcards):
    """Conda env of a generator: ICGAN (CC-BY-NC code from the user's checkout) has its own."""
    name = "icgan" if wildcards.generator == "icgan" else "diffusers"
    return str(ROOT / "envs" / f"{name}.yaml")


def icgan_arguments(wildcards):
    """Params function: the ic_gan checkout, its pinned commit, SwAV weights and truncation."""
    icgan = SCALE_CFG["generative"].get("icgan", {})
    if wildcards.generator != "icgan" or not icgan:
        return ""
    args = [f"--truncation {icgan.get('truncation', 0.7)}"]
    for key, flag in (
        ("code", "--icgan-code"),
        ("commit", "--icgan-commit"),
        ("swav", "--swav"),
    ):
        if icgan.get(key):
            args.append(f"{flag} {icgan[key]}")
    return " ".join(args)


def generated_image_size(wildcards):
    """Generated views have the dataset's training size, so they can replace its images."""
    return SCALE_CFG["datasets"][wildcards.dataset]["image_size"]


def shard_dir(wildcards):
    return f"{RESULTS}/generative_views/{wildcards.generator}/{wildcards.dataset}/shard{wildcards.shard}"


# ---------------------------------------------------------------- evaluations
def evaluation_of(protocol, wildcards):
    """A table's evaluation, or an ad-hoc one on any declared dataset (e.g. kNN monitoring)."""
    key = (protocol, wildcards.evaluation)
    if key in EVALUATIONS:
        return EVALUATIONS[key]
    if wildcards.evaluation in SCALE_CFG["datasets"]:
        return Evaluation(protocol=protocol, dataset=wildcards.evaluation)
    raise ValueError(
        f"evaluation {protocol}/{wildcards.evaluation} is neither part of a table "
        f"nor a dataset declared at scale {SCALE}"
    )


def encoder_of(wildcards):
    return f"{RESULTS}/pretrain/{wildcards.run}/encoder.pt"


def eval_data(protocol):
    """Input function: the prepared dataset of this rule's evaluation."""

    def data(wildcards):
        return dataset_dir(evaluation_of(protocol, wildcards).dataset)

    data.__name__ = f"{protocol}_data"
    return data


def eval_settings(protocol):
    """Params function: the scale's protocol settings with the cell's options (JSON)."""

    def settings(wildcards):
        return json.dumps(
            eval_spec(evaluation_of(protocol, wildcards), SCALE_CFG), sort_keys=True
        )

    settings.__name__ = f"{protocol}_settings"
    return settings


def eval_split(protocol, role):
    """Params function: the dataset's train or test split name (scale `datasets.<name>.splits`)."""

    def split(wildcards):
        dataset = evaluation_of(protocol, wildcards).dataset
        return eval_split_name(SCALE_CFG, protocol, dataset, role)

    split.__name__ = f"{protocol}_{role}_split"
    return split


def run_seed(wildcards):
    return run_of(wildcards).seed


def similarity_partner(wildcards):
    """Encoder B of a CKA/OPD evaluation of this run: a pretraining run, or None (CLIP)."""
    return partner_run(
        run_of(wildcards), evaluation_of("cka_opd", wildcards), SCALE_CFG
    )


def similarity_inputs(wildcards):
    """The run's encoder, the dataset and, when encoder B is a pretraining run, its encoder."""
    inputs = {"encoder": encoder_of(wildcards), "data": eval_data("cka_opd")(wildcards)}
    partner = similarity_partner(wildcards)
    if partner is not None:
        inputs["encoder_b"] = f"{RESULTS}/pretrain/{partner.run_id}/encoder.pt"
    return inputs


def similarity_encoder_b(wildcards):
    """`--encoder-b` of sslaug.evaluate.similarity: the partner's encoder.pt, or `clip`."""
    return similarity_inputs(wildcards).get("encoder_b", "clip")


# ---------------------------------------------------------------- placeholders
def placeholder_reason(wildcards):
    return gap_reason(wildcards.gap)


# ---------------------------------------------------------------- tables
def cell_file(cell, run):
    """Where a cell's number for one seed comes from."""
    evaluation = cell.evaluation
    if (
        cell.gap_id
    ):  # one placeholder per missing piece, shared by every cell that lacks it
        return f"{RESULTS}/placeholder/{cell.gap_id}.json"
    if evaluation.protocol in PRETRAIN_PROTOCOLS:
        return f"benchmarks/{SCALE}/pretrain/{run.run_id}.tsv"
    return f"{RESULTS}/eval/{evaluation.protocol}/{evaluation.eval_id}/{run.run_id}/metrics.json"


def table_inputs(wildcards):
    return sorted(
        {
            cell_file(cell, run)
            for cell in PLAN.cells[wildcards.table]
            for run in cell.runs
        }
    )


def table_plan(wildcards):
    """The table's cells for sslaug.tables.aggregate (JSON)."""
    table = PLAN.tables[wildcards.table]
    cells = [
        {
            "row": cell.row,
            "column": cell.column,
            "metric": cell.metric,
            "protocol": cell.evaluation.protocol,
            "files": [cell_file(cell, run) for run in cell.runs],
            "runs": [run.run_id for run in cell.runs],
        }
        for cell in PLAN.cells[wildcards.table]
    ]
    plan = {
        "table": wildcards.table,
        "scale": SCALE,
        "paper": table["paper"],
        "source": table["source"],
        "caption": table["caption"],
        "rows": list(table["rows"]),
        "columns": list(table["columns"]),
        "cells": cells,
    }
    return json.dumps(plan, sort_keys=True)


def sweep_figure(wildcards):
    """A sweep table's figure spec with its rows and columns, for sslaug.tables.plot (JSON)."""
    table = PLAN.tables.get(wildcards.table)
    if table is None or not table.get("figure"):
        raise ValueError(
            f"table {wildcards.table!r} declares no figure in config/tables.yaml"
        )
    spec = {
        "table": wildcards.table,
        "scale": SCALE,
        "source": table["source"],
        "caption": table["caption"],
        "metric": table.get("metric", ""),
        "rows": list(table["rows"]),
        "columns": list(table["columns"]),
        "figure": table["figure"],
    }
    return json.dumps(spec, sort_keys=True)


def sweep_figure_files():
    """The plot of every table that config/tables.yaml declares a sweep figure."""
    return [
        f"{RESULTS}/figures/{table}.svg"
        for table, spec in PLAN.tables.items()
        if spec.get("figure")
    ]


def all_table_files():
    return (
        [f"{RESULTS}/tables/{table}.md" for table in PLAN.tables]
        + [f"{RESULTS}/tables/README.md"]
        + sweep_figure_files()
    )

# Reproduce five SSL augmentation papers end to end: one DAG, three scales.
# Default target: all_tables on the embedded mini config (see README.md).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    scale=SCALE,
    dataset="[A-Za-z0-9_]+",
    evaluation="[^/]+",
    table="[a-z0-9_]+",
    run="[a-z0-9_]+/[^/]+/[^/]+/seed[0-9]+",
    gap="[a-z0-9_+-]+",
    shard="[0-9]+",
    generator="[a-z0-9_]+",
    style_set="[A-Za-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/precompute.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all_tables:
    default_target: True
    input:
        all_table_files(),

# Reproduce five SSL augmentation papers end to end: one DAG, three scales.
# Default target: all_tables on the embedded mini config (see README.md).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/precompute.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all_tables:
    default_target: True
    input:
        all_table_files(),

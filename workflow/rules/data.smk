# Stage 1: obtain each dataset (download, user path, or generated mini data) and
# prepare it once into a fast-loading format (see sslaug.data.formats).


rule prepare_dataset:
    output:
        directory("data/{dataset}"),
    params:
        arguments=prepare_arguments,
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "benchmarks/prepare_dataset/{dataset}.tsv"
    threads: 1
    resources:
        runtime=resource("prepare_dataset", "runtime"),
        mem_mb=resource("prepare_dataset", "mem_mb"),
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m sslaug.data.prepare --dataset {wildcards.dataset} {params.arguments} "
        "--out {output} > {log} 2>&1"

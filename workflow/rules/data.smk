# Stage 1: obtain each dataset (download, user path, or generated mini data) and
# prepare it once into a fast-loading format (see sslaug.data.formats).


rule prepare_dataset:
    output:
        directory("data/{dataset}"),
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        runtime=runtime_for("prepare_dataset"),
        mem_mb=resource("prepare_dataset", "mem_mb"),
    params:
        arguments=prepare_arguments,
    shell:
        "python -m sslaug.data.prepare --dataset {wildcards.dataset} {params.arguments} "
        "--out {output} > {log} 2>&1"

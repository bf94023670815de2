# Stage 4: evaluate pretrained encoders — linear probe and kNN on frozen features,
# full fine-tuning, detection transfer — and the placeholder for cells whose method
# or protocol lands in a later issue (it writes a "not implemented" status, never a
# number).


rule linear_probe:
    input:
        encoder=encoder_of,
        data=eval_data("linear"),
    output:
        f"{RESULTS}/eval/linear/{{evaluation}}/{{run}}/metrics.json",
    log:
        f"logs/{SCALE}/eval/linear/{{evaluation}}/{{run}}.log",
    benchmark:
        f"benchmarks/{SCALE}/eval/linear/{{evaluation}}/{{run}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        runtime=resource("linear_probe", "runtime"),
        mem_mb=resource("linear_probe", "mem_mb"),
        gpu=resource("linear_probe", "gpu"),
    params:
        spec=eval_settings("linear"),
        seed=run_seed,
    shell:
        "python -m sslaug.evaluate.linear --encoder {input.encoder} --data {input.data} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule knn:
    input:
        encoder=encoder_of,
        data=eval_data("knn"),
    output:
        f"{RESULTS}/eval/knn/{{evaluation}}/{{run}}/metrics.json",
    log:
        f"logs/{SCALE}/eval/knn/{{evaluation}}/{{run}}.log",
    benchmark:
        f"benchmarks/{SCALE}/eval/knn/{{evaluation}}/{{run}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        runtime=resource("knn", "runtime"),
        mem_mb=resource("knn", "mem_mb"),
        gpu=resource("knn", "gpu"),
    params:
        spec=eval_settings("knn"),
        seed=run_seed,
    shell:
        "python -m sslaug.evaluate.knn --encoder {input.encoder} --data {input.data} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule finetune:
    input:
        encoder=encoder_of,
        data=eval_data("finetune"),
    output:
        f"{RESULTS}/eval/finetune/{{evaluation}}/{{run}}/metrics.json",
    log:
        f"logs/{SCALE}/eval/finetune/{{evaluation}}/{{run}}.log",
    benchmark:
        f"benchmarks/{SCALE}/eval/finetune/{{evaluation}}/{{run}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        runtime=resource("finetune", "runtime"),
        mem_mb=resource("finetune", "mem_mb"),
        gpu=resource("finetune", "gpu"),
    params:
        spec=eval_settings("finetune"),
        seed=run_seed,
    shell:
        "python -m sslaug.evaluate.finetune --encoder {input.encoder} --data {input.data} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule detection_transfer:
    input:
        encoder=encoder_of,
        data=eval_data("detection"),
    output:
        f"{RESULTS}/eval/detection/{{evaluation}}/{{run}}/metrics.json",
    log:
        f"logs/{SCALE}/eval/detection/{{evaluation}}/{{run}}.log",
    benchmark:
        f"benchmarks/{SCALE}/eval/detection/{{evaluation}}/{{run}}.tsv"
    conda:
        "../../envs/detection.yaml"
    threads: THREADS
    resources:
        runtime=resource("detection_transfer", "runtime"),
        mem_mb=resource("detection_transfer", "mem_mb"),
        gpu=resource("detection_transfer", "gpu"),
    params:
        spec=eval_settings("detection"),
        seed=run_seed,
    shell:
        "python -m sslaug.evaluate.detection --encoder {input.encoder} --data {input.data} "
        "--train-split train --test-split val "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule placeholder_not_implemented:
    output:
        f"{RESULTS}/placeholder/{{gap}}.json",
    log:
        f"logs/{SCALE}/placeholder/{{gap}}.log",
    benchmark:
        f"benchmarks/{SCALE}/placeholder/{{gap}}.tsv"
    conda:
        "../../envs/tables.yaml"
    threads: 1
    resources:
        runtime=1,
        mem_mb=100,
    params:
        reason=placeholder_reason,
    message:
        "PLACEHOLDER {wildcards.gap}: {params.reason}. "
        "It writes a status, and no number reaches any table."
    shell:
        "python -m sslaug.tables.placeholder --reason {params.reason:q} --out {output} > {log} 2>&1"

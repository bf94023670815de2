# Stage 4: evaluate pretrained encoders — linear probe and kNN on frozen features,
# full fine-tuning, detection transfer, CKA/OPD dissimilarity of two encoders — and
# the placeholder for cells whose method or protocol lands in a later issue (it writes
# a "not implemented" status, never a number).


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
    threads: resource("linear_probe", "cpus")
    resources:
        runtime=runtime_for("linear_probe"),
        mem_mb=resource("linear_probe", "mem_mb"),
        gpu=resource("linear_probe", "gpu"),
    params:
        spec=eval_settings("linear"),
        seed=run_seed,
        train_split=eval_split("linear", "train"),
        test_split=eval_split("linear", "test"),
    shell:
        "python -m sslaug.evaluate.linear --encoder {input.encoder} --data {input.data} "
        "--train-split {params.train_split} --test-split {params.test_split} "
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
    threads: resource("knn", "cpus")
    resources:
        runtime=runtime_for("knn"),
        mem_mb=resource("knn", "mem_mb"),
        gpu=resource("knn", "gpu"),
    params:
        spec=eval_settings("knn"),
        seed=run_seed,
        train_split=eval_split("knn", "train"),
        test_split=eval_split("knn", "test"),
    shell:
        "python -m sslaug.evaluate.knn --encoder {input.encoder} --data {input.data} "
        "--train-split {params.train_split} --test-split {params.test_split} "
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
    threads: resource("finetune", "cpus")
    resources:
        runtime=runtime_for("finetune"),
        mem_mb=resource("finetune", "mem_mb"),
        gpu=resource("finetune", "gpu"),
    params:
        spec=eval_settings("finetune"),
        seed=run_seed,
        train_split=eval_split("finetune", "train"),
        test_split=eval_split("finetune", "test"),
    shell:
        "python -m sslaug.evaluate.finetune --encoder {input.encoder} --data {input.data} "
        "--train-split {params.train_split} --test-split {params.test_split} "
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
    threads: resource("detection_transfer", "cpus")
    resources:
        runtime=runtime_for("detection_transfer"),
        mem_mb=resource("detection_transfer", "mem_mb"),
        gpu=resource("detection_transfer", "gpu"),
    params:
        spec=eval_settings("detection"),
        seed=run_seed,
        train_split=eval_split("detection", "train"),
        test_split=eval_split("detection", "test"),
    shell:
        "python -m sslaug.evaluate.detection --encoder {input.encoder} --data {input.data} "
        "--train-split {params.train_split} --test-split {params.test_split} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule voc07_classification:
    input:
        encoder=encoder_of,
        data=eval_data("voc07_cls"),
    output:
        f"{RESULTS}/eval/voc07_cls/{{evaluation}}/{{run}}/metrics.json",
    log:
        f"logs/{SCALE}/eval/voc07_cls/{{evaluation}}/{{run}}.log",
    benchmark:
        f"benchmarks/{SCALE}/eval/voc07_cls/{{evaluation}}/{{run}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resource("voc07_classification", "cpus")
    resources:
        runtime=runtime_for("voc07_classification"),
        mem_mb=resource("voc07_classification", "mem_mb"),
        gpu=resource("voc07_classification", "gpu"),
    params:
        spec=eval_settings("voc07_cls"),
        seed=run_seed,
        train_split=eval_split("voc07_cls", "train"),
        test_split=eval_split("voc07_cls", "test"),
    shell:
        "python -m sslaug.evaluate.voc07 --encoder {input.encoder} --data {input.data} "
        "--train-split {params.train_split} --test-split {params.test_split} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule representation_similarity:
    input:
        unpack(similarity_inputs),
    output:
        f"{RESULTS}/eval/cka_opd/{{evaluation}}/{{run}}/metrics.json",
    log:
        f"logs/{SCALE}/eval/cka_opd/{{evaluation}}/{{run}}.log",
    benchmark:
        f"benchmarks/{SCALE}/eval/cka_opd/{{evaluation}}/{{run}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resource("representation_similarity", "cpus")
    resources:
        runtime=runtime_for("representation_similarity"),
        mem_mb=resource("representation_similarity", "mem_mb"),
        gpu=resource("representation_similarity", "gpu"),
    params:
        encoder_b=similarity_encoder_b,
        spec=eval_settings("cka_opd"),
        seed=run_seed,
        split=eval_split("cka_opd", "test"),
    shell:
        "python -m sslaug.evaluate.similarity --encoder {input.encoder} --encoder-b {params.encoder_b} "
        "--data {input.data} --test-split {params.split} --spec {params.spec:q} --seed {params.seed} "
        "--threads {threads} --out {output} > {log} 2>&1"


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

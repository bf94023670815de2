# Stage 3: self-supervised pretraining, one job per run (method x augmentation x
# backbone x dataset x epochs x seed). Rerunning a killed job resumes from
# checkpoint.pt in the run directory, which is deliberately not a declared output so
# that Snakemake never deletes it.


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        encoder=f"{RESULTS}/pretrain/{{run}}/encoder.pt",
    log:
        f"logs/{SCALE}/pretrain/{{run}}.log",
    benchmark:
        f"benchmarks/{SCALE}/pretrain/{{run}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resource("pretrain", "cpus")
    resources:
        runtime=runtime_for("pretrain"),
        mem_mb=resource("pretrain", "mem_mb"),
        gpu=pretrain_gpus,
    params:
        spec=pretrain_spec,
        run_dir=pretrain_run_dir,
        launcher=launcher,
        extra=pretrain_extra_arguments,
    shell:
        "{params.launcher} -m sslaug.engine.pretrain --spec {params.spec:q} --data {input.data} "
        "--run-dir {params.run_dir} {params.extra} --out {output.encoder} --threads {threads} --gpus {resources.gpu} > {log} 2>&1"

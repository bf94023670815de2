# Stage 2: precompute what augmentations need before pretraining: SASSL's stylizer
# weights (Magenta's released checkpoint, converted; cifar/paper only) and style
# embeddings of an external style set, and generative views (unCLIP, ICGAN) of a dataset,
# sharded so a cluster runs shards in parallel and a failed shard reruns alone.


rule convert_stylizer_weights:
    output:
        "resources/stylizer/{weights_name}.pt",
    log:
        f"logs/{SCALE}/stylizer/{{weights_name}}.log",
    benchmark:
        f"benchmarks/{SCALE}/stylizer/{{weights_name}}.tsv"
    conda:
        "../../envs/magenta_convert.yaml"
    threads: resource("convert_stylizer_weights", "cpus")
    resources:
        runtime=runtime_for("convert_stylizer_weights"),
        mem_mb=resource("convert_stylizer_weights", "mem_mb"),
        gpu=resource("convert_stylizer_weights", "gpu"),
    params:
        checkpoint=magenta_checkpoint,
    shell:
        "python -m sslaug.augment.stylizer_convert --checkpoint {params.checkpoint:q} "
        "--download-dir data/_downloads/magenta --out {output} > {log} 2>&1"


rule precompute_style_features:
    input:
        styles="data/{style_set}",
        stylizer=stylizer_weights_input,
    output:
        f"{RESULTS}/style_features/{{style_set}}.pt",
    log:
        f"logs/{SCALE}/style_features/{{style_set}}.log",
    benchmark:
        f"benchmarks/{SCALE}/style_features/{{style_set}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: resource("precompute_style_features", "cpus")
    resources:
        runtime=runtime_for("precompute_style_features"),
        mem_mb=resource("precompute_style_features", "mem_mb"),
        gpu=resource("precompute_style_features", "gpu"),
    params:
        weights=stylizer_setting("weights"),
        config=stylizer_config,
        batch_size=stylizer_setting("batch_size"),
        max_images=stylizer_setting("max_style_images"),
    shell:
        "python -m sslaug.augment.style_features --styles {input.styles} --stylizer {params.weights} "
        "--config {params.config:q} --batch-size {params.batch_size} --max-images {params.max_images} "
        "--workers {threads} --threads {threads} --out {output} > {log} 2>&1"


rule precompute_generative_views:
    input:
        data="data/{dataset}",
    output:
        views=f"{RESULTS}/generative_views/{{generator}}/{{dataset}}/shard{{shard}}/views.npy",
        manifest=f"{RESULTS}/generative_views/{{generator}}/{{dataset}}/shard{{shard}}/manifest.json",
    log:
        f"logs/{SCALE}/generative_views/{{generator}}/{{dataset}}/shard{{shard}}.log",
    benchmark:
        f"benchmarks/{SCALE}/generative_views/{{generator}}/{{dataset}}/shard{{shard}}.tsv"
    conda:
        generator_env
    threads: resource("precompute_generative_views", "cpus")
    resources:
        runtime=runtime_for("precompute_generative_views"),
        mem_mb=resource("precompute_generative_views", "mem_mb"),
        gpu=resource("precompute_generative_views", "gpu"),
    params:
        model=generator_model,
        views=generative_setting("views"),
        num_shards=generative_setting("num_shards"),
        batch_size=generative_setting("batch_size"),
        steps=generative_setting("steps"),
        image_size=generated_image_size,
        shard_dir=shard_dir,
        icgan=icgan_arguments,
    shell:
        "python -m sslaug.augment.generative_views --data {input.data} --split train "
        "--generator {wildcards.generator} --model {params.model} --views {params.views} "
        "--shard {wildcards.shard} --num-shards {params.num_shards} --batch-size {params.batch_size} --steps {params.steps} "
        "--image-size {params.image_size} --threads {threads} {params.icgan} --out {params.shard_dir} > {log} 2>&1"

# Stage 5: aggregate each paper table (reproduced mean +- std over seeds beside the
# paper's value and the difference) as CSV + Markdown, an index of all tables, and a
# plot of each table that is a sweep figure in the paper (config/tables.yaml: figure).


rule aggregate_table:
    input:
        cells=table_inputs,
        paper_values=WF.paper_values,
    output:
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/table.rst",
            category="Paper tables",
        ),
        markdown=f"{RESULTS}/tables/{{table}}.md",
    log:
        f"logs/{SCALE}/tables/{{table}}.log",
    benchmark:
        f"benchmarks/{SCALE}/tables/{{table}}.tsv"
    conda:
        "../../envs/tables.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=500,
    params:
        plan=table_plan,
    shell:
        "python -m sslaug.tables.aggregate --plan {params.plan:q} --paper-values {input.paper_values} "
        "--csv {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule plot_sweep:
    input:
        f"{RESULTS}/tables/{{table}}.csv",
    output:
        report(
            f"{RESULTS}/figures/{{table}}.svg",
            caption="../report/sweep.rst",
            category="Sweep figures",
        ),
    log:
        f"logs/{SCALE}/figures/{{table}}.log",
    benchmark:
        f"benchmarks/{SCALE}/figures/{{table}}.tsv"
    conda:
        "../../envs/tables.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=500,
    params:
        figure=sweep_figure,
    shell:
        "python -m sslaug.tables.plot --csv {input} --figure {params.figure:q} --out {output} > {log} 2>&1"


rule tables_index:
    input:
        expand(f"{RESULTS}/tables/{{table}}.md", table=list(PLAN.tables)),
    output:
        f"{RESULTS}/tables/README.md",
    log:
        f"logs/{SCALE}/tables/index.log",
    benchmark:
        f"benchmarks/{SCALE}/tables/index.tsv"
    conda:
        "../../envs/tables.yaml"
    threads: 1
    resources:
        runtime=5,
        mem_mb=500,
    params:
        scale=SCALE,
    shell:
        "python -m sslaug.tables.index --scale {params.scale} --out {output} {input} > {log} 2>&1"

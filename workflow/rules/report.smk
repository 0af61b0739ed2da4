# Summary tables for the HTML report (`snakemake --report report.html`): one row
# per model and task, written as standalone HTML pages the report shows.


rule summary_tables:
    input:
        surprisal="results/surprisal.parquet",
        bayes="results/bayes.parquet",
    output:
        surprisal=report(
            "results/tables/surprisal_summary.html",
            caption="../report/surprisal_summary.rst",
            category="0. Summary tables",
            labels={"table": "surprisal"},
        ),
        bayes=report(
            "results/tables/bayes_summary.html",
            caption="../report/bayes_summary.rst",
            category="0. Summary tables",
            labels={"table": "Bayesian learner"},
        ),
    log:
        "logs/summary_tables.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        code=code("summary_tables.py"),
    script:
        "../scripts/summary_tables.py"


# One summary table per analysis stage, built only where the stage runs.
rule stage_summary_table:
    input:
        stage_summary_inputs,
    output:
        report(
            "results/tables/{stage}_summary.html",
            caption="../report/stage_summaries.rst",
            category="0. Summary tables",
            labels={"table": "{stage}"},
        ),
    log:
        "logs/stage_summary_table/{stage}.log",
    wildcard_constraints:
        stage="probe|lens|heads|patching",
    conda:
        "../envs/iclprobe.yaml"
    params:
        code=code("stage_summary_table.py"),
    script:
        "../scripts/stage_summary_table.py"
